"""What a folder is, from its Zarr and OME-Zarr metadata.

Zarr arrays and groups (v2 and v3) are recognised by their metadata files and their
attributes read as JSON, without opening them through zarr, so that a folder that is no
Zarr node (a folder of TIFFs) costs nothing and a broken one gives a clear error. The
OME-Zarr (NGFF 0.1 to 0.5) helpers find a multiscale image's levels, axes and scales.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zarr

from embedseg_cli.errors import InputError

__all__ = [
    "NGFF_AXES",
    "is_zarr",
    "ome_attrs",
    "ome_level0",
    "ome_multiscale",
    "open_zarr_array",
    "read_zarr_attrs",
    "scale_of",
    "zarr_attrs",
    "zarr_format_of",
    "zarr_node_type",
]

NGFF_AXES = "TCZYX"
"""The OME-Zarr axes, in the order OME-Zarr requires."""


def zarr_node_type(path: Path) -> str | None:
    """``"array"`` or ``"group"`` for a Zarr node (v2 or v3), None for anything else."""
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text()).get("node_type"))
        except (OSError, ValueError):
            return None
    if (path / ".zarray").is_file():
        return "array"
    if (path / ".zgroup").is_file():
        return "group"
    return None


def zarr_attrs(path: Path) -> dict[str, Any]:
    """The attributes of the Zarr node at ``path`` (empty where it has none).

    Raises
    ------
    OSError, ValueError
        Where the metadata cannot be read or is not JSON.
    """
    meta = path / "zarr.json"
    if meta.is_file():
        attrs = json.loads(meta.read_text()).get("attributes", {})
        return dict(attrs) if isinstance(attrs, dict) else {}
    legacy = path / ".zattrs"
    return dict(json.loads(legacy.read_text())) if legacy.is_file() else {}


def ome_level0(attrs: dict[str, Any]) -> str | None:
    """Path of the full-resolution array of an OME-Zarr multiscale group, if it is one."""
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if isinstance(multiscales, list) and multiscales:
        datasets = multiscales[0].get("datasets", [])
        if datasets:
            return str(datasets[0]["path"])
    return None


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a Zarr array or group (v2 or v3)."""
    return path.is_dir() and zarr_node_type(path) is not None


def read_zarr_attrs(path: Path) -> dict[str, Any]:
    """:func:`zarr_attrs`, with a clear :class:`InputError` for unreadable metadata."""
    try:
        return zarr_attrs(path)
    except (OSError, ValueError) as exc:
        msg = f"the Zarr metadata of {path} cannot be read ({exc}): check that it is complete"
        raise InputError(msg) from None


def group_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the Zarr group at ``path``; None where it is none or unreadable."""
    if zarr_node_type(path) != "group":
        return None
    try:
        return zarr_attrs(path)
    except (OSError, ValueError):
        return None


def ome_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The OME-Zarr metadata: under ``ome`` in 0.5, the attributes themselves before."""
    ome = attrs.get("ome", attrs)
    return ome if isinstance(ome, dict) else {}


def ome_multiscale(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The first multiscale of an OME-Zarr image's attributes, if it has one with levels."""
    multiscales = ome_attrs(attrs).get("multiscales")
    if isinstance(multiscales, list) and multiscales and isinstance(multiscales[0], dict):
        datasets = multiscales[0].get("datasets")
        if isinstance(datasets, list) and datasets and isinstance(datasets[0], dict):
            return multiscales[0]
    return None


def scale_of(transforms: Any, ndim: int) -> list[float] | None:
    """The ``scale`` of OME-Zarr ``coordinateTransformations``, if one fits ``ndim`` axes."""
    if not isinstance(transforms, list):
        return None
    for transform in transforms:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            scale = transform.get("scale")
            if isinstance(scale, list) and len(scale) == ndim:
                return [float(value) for value in scale]
    return None


def zarr_format_of(path: Path) -> int | None:
    """The Zarr format (2 or 3) of the node at ``path``, None where it is none."""
    if (path / "zarr.json").is_file():
        return 3
    if (path / ".zgroup").is_file() or (path / ".zarray").is_file():
        return 2
    return None


def open_zarr_array(path: Path) -> zarr.Array[Any]:
    """Open the Zarr array at ``path`` for reading, with a clear error where it cannot be."""
    try:
        return zarr.open_array(path, mode="r")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"{path} cannot be read as a Zarr array ({exc}): check that it is complete"
        raise InputError(msg) from None
