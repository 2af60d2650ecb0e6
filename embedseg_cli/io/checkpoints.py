"""Checkpoints and run metrics in the project store, written atomically and read verified.

A checkpoint (``checkpoints/<run>/<tag>``, see ``docs/store.md``) stores no pickle: one Zarr
array per network tensor, the rest packed into one flat array per data type, and the data
type, shape and SHA-256 of every stored array in its attributes. Reading it checks each
array against that record, so that a damaged checkpoint is an error naming the array,
never a network with other weights. :class:`~embedseg_cli.io.store.ProjectStore` calls
these functions from its methods of the same names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.core.common import JSON

from embedseg_cli.errors import CheckpointError, StoreError
from embedseg_cli.io.store_layout import embedseg_attrs, replace_group

__all__ = [
    "checkpoint_runs",
    "checkpoint_tags",
    "read_checkpoint",
    "read_run_metrics",
    "write_checkpoint",
    "write_run_metrics",
]

_CHECKPOINT_FIX = (
    "use the run's other checkpoint (predict --checkpoint best or last) or another run, "
    "or train again (train --run NAME --overwrite)"
)

# What Zarr and its codecs raise on bytes they cannot decode (numcodecs' Zstandard raises
# RuntimeError, a truncated chunk ValueError).
_DECODE_ERRORS = (RuntimeError, ValueError, TypeError, OSError, EOFError, KeyError)


def _sha256(array: NDArray[Any]) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _damaged(where: str, name: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{where} cannot be used: its tensor {name} {problem}; {_CHECKPOINT_FIX}"
    )


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


def _complete_tags(run: zarr.Group) -> list[str]:
    return sorted(
        tag
        for tag, group in run.groups()
        if not tag.startswith(".") and embedseg_attrs(group).get("complete") is True
    )


def _checkpoint_time(root: zarr.Group, run: str) -> float:
    times = [
        float(embedseg_attrs(group).get("time", 0.0))
        for tag, group in root[f"checkpoints/{run}"].groups()  # type: ignore[union-attr]
        if not tag.startswith(".")
    ]
    return max(times, default=0.0)


def checkpoint_runs(root: zarr.Group) -> list[str]:
    """Names of the training runs that have at least one complete checkpoint."""
    runs = root["checkpoints"]
    if not isinstance(runs, zarr.Group):
        return []
    return sorted(name for name, group in runs.groups() if _complete_tags(group))


def checkpoint_tags(root: zarr.Group, run: str) -> list[str]:
    """The complete checkpoints (``best``, ``last``) of a training run."""
    node = root.get(f"checkpoints/{run}")
    return _complete_tags(node) if isinstance(node, zarr.Group) else []


def write_checkpoint(
    path: Path, run: str, tag: str, tensors: dict[str, NDArray[Any]], attrs: dict[str, JSON]
) -> None:
    """Store a checkpoint (tensors and attributes, no pickle), replacing ``tag``, atomically.

    Network tensors (names starting with ``model.``) get one array each, readable by any
    Zarr reader. The rest (optimiser moments, random state) are packed into one flat
    array per data type with a JSON index of names, shapes and offsets, as safetensors
    does: they are many, small, and only ever read back whole by ``--resume``. Each
    stored array's data type, shape and SHA-256 are recorded in the attributes
    (``tensors``) and every chunk is written, even one of zeros, so that
    :func:`read_checkpoint` can tell a damaged or missing chunk from real values.

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
        index.append({"name": name, "dtype": dtype, "shape": list(tensor.shape), "offset": offset})
    arrays.update({f"packed.{dtype}": np.concatenate(parts) for dtype, parts in packed.items()})
    recorded: dict[str, JSON] = {
        key: {"dtype": array.dtype.name, "shape": list(array.shape), "sha256": _sha256(array)}
        for key, array in arrays.items()
    }
    try:
        replace_group(
            path,
            f"checkpoints/{run}",
            tag,
            arrays,
            None,
            {**attrs, "packed": index, "tensors": recorded},
            write_empty_chunks=True,
        )
    except OSError as exc:
        msg = (
            f"cannot write checkpoint {run}/{tag} in {path} ({exc.strerror or exc}): "
            "the previous checkpoints are kept; free disk space (or fix the permissions) "
            f"and continue with `embedseg train {path} --run {run} --resume`"
        )
        raise CheckpointError(msg) from exc


def read_checkpoint(
    path: Path, root: zarr.Group, run: str | None = None, tag: str = "best"
) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """Read a checkpoint's tensors and attributes (``run`` None: the newest run).

    ``root`` is the store's root group, open for reading; ``path`` is where the store is,
    for the messages.

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
    runs = checkpoint_runs(root)
    if not runs:
        msg = f"{path} has no trained checkpoint: run `embedseg train {path}` first"
        raise StoreError(msg)
    run = run or max(runs, key=lambda name: _checkpoint_time(root, name))
    if tag not in checkpoint_tags(root, run):
        msg = f"{path} has no complete checkpoint {run}/{tag} (it has: {', '.join(runs)})"
        raise StoreError(msg)
    group = root[f"checkpoints/{run}/{tag}"]
    assert isinstance(group, zarr.Group)  # checked by checkpoint_tags
    attrs = embedseg_attrs(group)
    index = attrs.pop("packed", [])
    recorded = attrs.pop("tensors", None)
    where = f"checkpoint {run}/{tag} in {path}"
    if isinstance(recorded, Mapping):
        names = list(recorded)
    else:
        recorded = None
        names = sorted({key for key, _ in group.arrays()} | {f"packed.{e['dtype']}" for e in index})
    stored = {
        name: _read_tensor(group, name, recorded[name] if recorded else None, where)
        for name in names
    }
    tensors = {k: v for k, v in stored.items() if not k.startswith("packed.")}
    for entry in index:
        size = int(np.prod(entry["shape"], dtype=np.int64))
        flat = stored[f"packed.{entry['dtype']}"]
        if entry["offset"] + size > flat.size:
            raise _damaged(where, f"packed.{entry['dtype']}", f"is too short for {entry['name']}")
        tensors[entry["name"]] = flat[entry["offset"] : entry["offset"] + size].reshape(
            entry["shape"]
        )
    return tensors, attrs


def write_run_metrics(path: Path, run: str, epochs: list[dict[str, JSON]]) -> None:
    """Record the per-epoch metrics of a training run (replacing earlier ones).

    Raises
    ------
    StoreError
        Where they cannot be written (disk full, no permission); the earlier ones are kept.
    """
    try:
        replace_group(path, "runs", run, {}, None, {"epochs": epochs})
    except OSError as exc:
        msg = (
            f"cannot write the metrics of run {run} in {path} ({exc.strerror or exc}): "
            "free disk space (or fix the permissions) and continue with "
            f"`embedseg train {path} --run {run} --resume`"
        )
        raise StoreError(msg) from exc


def read_run_metrics(root: zarr.Group, run: str) -> list[dict[str, Any]]:
    """The per-epoch metrics of a training run (empty if none were recorded)."""
    node = root.get(f"runs/{run}")
    if not isinstance(node, zarr.Group):
        return []
    return list(embedseg_attrs(node).get("epochs", []))
