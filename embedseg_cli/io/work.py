"""``predict``'s work folder and output records: its private on-disk formats.

A run of ``predict`` works in a hidden folder beside its output (:func:`work_beside`)::

    .<out>.embedseg-work/
      state.json          the settings the run started with (a resumed run must match them)
      outputs/            the blended network outputs, float16 Zarr (C, *S)
      keys/               per voxel, the seed name of its instance, uint64 Zarr
      windows/            network outputs of single windows (.npy) until their blocks have them
      network/<block>     marker: the block's outputs are stored
      clustering/<block>  the seed names of the instances in the block's core (.npy)

Finished blocks are marked, so a resumed run continues where an interrupted one stopped.
The folder is removed once the labels are written; with ``--keep-outputs`` its ``outputs``
array moves into the ``.zarr`` output as ``embedseg_outputs``, where ``embedseg recluster`` finds
it. A finished output records how it was made (:func:`write_output_record`), in its Zarr
attributes or its TIFF description, so that ``--resume`` can tell it is complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import dask.array as da
import numpy as np
import zarr
from numpy.typing import NDArray

from embedseg_cli.errors import InputError
from embedseg_cli.io.tiff import read_tiff_description

__all__ = [
    "KEPT_OUTPUTS",
    "WindowFiles",
    "Work",
    "WorkArray",
    "add_to_outputs_record",
    "count_done",
    "discard_work",
    "keep_outputs",
    "load_block_names",
    "mark_done",
    "memory_work",
    "open_outputs",
    "open_work",
    "read_output_record",
    "read_outputs_record",
    "read_state",
    "record_description",
    "restart_clustering",
    "save_block_names",
    "take_kept_outputs",
    "work_beside",
    "write_output_record",
    "write_outputs_record",
    "written_labels",
]

WorkArray: TypeAlias = "zarr.Array[Any]"
"""A Zarr array of the work folder (the network outputs or the instance keys)."""

KEPT_OUTPUTS = "embedseg_outputs"
"""Where ``--keep-outputs`` keeps the network outputs inside a ``.zarr`` output."""

_TIFF_RECORD = "embedseg predict "
"""How a TIFF output's description starts: then the record of how it was made, as JSON."""


def work_beside(out: Path) -> Path:
    """The work folder of a run writing ``out``: a hidden sibling.

    Examples
    --------
    >>> work_beside(Path("data/out.tif")).as_posix()
    'data/.out.tif.embedseg-work'
    """
    return out.with_name(f".{out.name}.embedseg-work")


class WindowFiles:
    """Network outputs of windows, kept on disk until every block that needs them has them.

    A window's outputs are written once (float16, renamed into place) and read by each
    block it touches; the last of those blocks deletes them. Memory then holds only the
    windows being computed or blended, whatever the size of the volume, and a resumed run
    reuses the windows already written.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, index: int) -> Path:
        """The file of window ``index``."""
        return self.folder / f"{index}.npy"

    def save(self, index: int, values: NDArray[np.float16]) -> None:
        """Write the outputs of window ``index``, all or nothing."""
        staging = self.folder / f".{index}.npy.tmp"
        with staging.open("wb") as handle:
            np.save(handle, values)
        staging.replace(self.path(index))

    def load(self, index: int) -> NDArray[np.float16]:
        """The outputs of window ``index``."""
        return np.asarray(np.load(self.path(index)))

    def release(self, index: int, block: str, consumers: Sequence[str]) -> None:
        """Record that ``block`` is done with window ``index``; delete it after the last."""
        (self.folder / f"{index}.{block}.used").touch()
        if all((self.folder / f"{index}.{other}.used").exists() for other in consumers):
            self.path(index).unlink(missing_ok=True)
            for other in consumers:
                (self.folder / f"{index}.{other}.used").unlink(missing_ok=True)


@dataclass(frozen=True)
class Work:
    """An open work folder."""

    outputs: WorkArray
    keys: WorkArray
    network: Path
    """The markers of blocks whose outputs are stored."""
    clustering: Path
    """The markers of clustered blocks (with the seed names of their instances)."""
    windows: WindowFiles


def read_state(work: Path) -> dict[str, Any]:
    """The settings the run that left ``work`` started with.

    Raises
    ------
    OSError, ValueError
        Where ``work`` has no readable ``state.json``.
    """
    state: dict[str, Any] = json.loads((work / "state.json").read_text())
    return state


def _inner_chunk(block: int, ndim: int) -> int:
    """A divisor of ``block`` near 256 (2D) or 64 (3D) voxels: the outputs' chunk.

    Examples
    --------
    >>> _inner_chunk(1024, 2), _inner_chunk(100, 2), _inner_chunk(250, 3)
    (256, 100, 50)
    """
    target = 256 if ndim == 2 else 64
    divisors = [d for d in range(target // 4, target + 1) if block % d == 0]
    return block if block <= target or not divisors else max(divisors)


def open_work(
    work: Path,
    state: dict[str, Any],
    *,
    shape: tuple[int, ...],
    block: tuple[int, ...],
    channels: int,
    resume: bool,
) -> Work:
    """The work folder's arrays and block markers, fresh or (``resume``) as left.

    Raises
    ------
    InputError
        Where ``resume`` finds a run that started with another ``state``.
    """
    state_path = work / "state.json"
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if state_path.exists():
        before = json.loads(state_path.read_text())
        changed = sorted(k for k in {*before, *state} if before.get(k) != state.get(k))
        if changed:
            what = ", ".join(f"{k} {before.get(k)} then {state.get(k)}" for k in changed)
            msg = (
                f"{work} holds an interrupted run with other settings ({what}): run again with "
                "the same input, model and options, or without --resume to start over"
            )
            raise InputError(msg)
    state_path.write_text(json.dumps(state))
    ndim = len(shape)
    clipped = tuple(min(b, n) for b, n in zip(block, shape, strict=True))
    # Chunks that tile each block (a block's task writes all of its chunks, no other task
    # touches them) and are small, so that clustering a block reads only thin slices of
    # its neighbours under its halo. Not compressed: float16 network outputs shrink by
    # ~15% at several times the cost.
    if (work / "outputs" / "zarr.json").is_file():
        outputs = zarr.open_array(work / "outputs", mode="r+")
    else:
        outputs = zarr.create_array(
            work / "outputs",
            shape=(channels, *shape),
            chunks=(channels, *(_inner_chunk(n, ndim) for n in clipped)),
            compressors=None,
            dtype="float16",
            overwrite=True,
        )
    keys = zarr.open_array(
        work / "keys", mode="a", shape=shape, chunks=block, dtype="uint64", zarr_format=3
    )
    network, clustering = work / "network", work / "clustering"
    network.mkdir(exist_ok=True)
    clustering.mkdir(exist_ok=True)
    windows = WindowFiles(work / "windows")
    windows.folder.mkdir(exist_ok=True)
    return Work(outputs, keys, network, clustering, windows)


def memory_work(
    shape: tuple[int, ...], block: tuple[int, ...], channels: int
) -> tuple[WorkArray, WorkArray]:
    """Outputs and keys arrays in memory, for a run that writes nothing (a dry run)."""
    memory = zarr.storage.MemoryStore()
    outputs = zarr.create_array(
        memory, name="outputs", shape=(channels, *shape), chunks=(channels, *block), dtype="float16"
    )
    keys = zarr.create_array(memory, name="keys", shape=shape, chunks=block, dtype="uint64")
    return outputs, keys


def restart_clustering(
    work: Path, shape: tuple[int, ...], block: tuple[int, ...]
) -> tuple[WorkArray, Path]:
    """A fresh keys array and no clustered block in ``work`` (to cluster outputs again)."""
    keys: WorkArray = zarr.open_array(
        work / "keys", mode="w", shape=shape, chunks=block, dtype="uint64"
    )
    done = work / "clustering"
    shutil.rmtree(done, ignore_errors=True)
    done.mkdir()
    return keys, done


def mark_done(marker: Path) -> None:
    """Mark a block finished (a block's marker is a file named after it)."""
    marker.touch()


def save_block_names(marker: Path, names: NDArray[np.uint64]) -> None:
    """Mark a block clustered, with the seed names of the instances in its core."""
    staging = marker.with_name(f"{marker.name}.tmp.npy")
    np.save(staging, names)
    staging.replace(marker)


def load_block_names(marker: Path) -> NDArray[np.uint64]:
    """The seed names that :func:`save_block_names` stored for a block."""
    return np.asarray(np.load(marker), dtype=np.uint64)


def count_done(markers: Path) -> int:
    """How many blocks have a marker in the folder ``markers`` (0 where it is missing)."""
    if not markers.is_dir():
        return 0
    return sum(1 for p in markers.iterdir() if not p.name.startswith("."))


def write_outputs_record(outputs: WorkArray, record: dict[str, Any]) -> None:
    """Record on the network outputs what clustering them again needs."""
    outputs.attrs["embedseg"] = record


def add_to_outputs_record(path: Path, extra: dict[str, Any]) -> None:
    """Add ``extra`` to the record of the network outputs stored at ``path``."""
    outputs = zarr.open_array(path, mode="r+")
    outputs.attrs["embedseg"] = {
        **outputs.attrs["embedseg"],  # type: ignore[dict-item]
        **extra,
    }


def open_outputs(path: Path) -> WorkArray:
    """The network outputs stored at ``path``, to read."""
    outputs: WorkArray = zarr.open_array(path, mode="r")
    return outputs


def read_outputs_record(outputs: WorkArray) -> dict[str, Any]:
    """The record of the network outputs (JSON types), empty where there is none."""
    record: dict[str, Any] = json.loads(json.dumps(outputs.attrs.asdict().get("embedseg", {})))
    return record


def take_kept_outputs(source: Path, work: Path) -> WorkArray | None:
    """The network outputs kept in the ``.zarr`` output ``source``, moved into ``work``.

    Outputs already moved there (by an interrupted ``embedseg recluster``) are taken as they are;
    None where there are none.
    """
    kept = source / KEPT_OUTPUTS
    if not kept.is_dir() and not (work / "outputs").is_dir():
        return None
    if kept.is_dir():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        kept.rename(work / "outputs")
    return open_outputs(work / "outputs")


def keep_outputs(work: Path, into: Path) -> None:
    """Move the network outputs of ``work`` into the ``.zarr`` output ``into``."""
    kept = into / KEPT_OUTPUTS
    shutil.rmtree(kept, ignore_errors=True)
    (work / "outputs").rename(kept)


def discard_work(work: Path) -> None:
    """Remove a work folder (what is left of it)."""
    shutil.rmtree(work, ignore_errors=True)


def write_output_record(group: Path, record: dict[str, Any]) -> None:
    """Record in the attributes of the Zarr group ``group`` how it was made."""
    zarr.open_group(group, mode="r+").attrs["embedseg"] = record


def record_description(record: dict[str, Any]) -> str:
    """A TIFF description holding ``record``, for :func:`read_output_record`.

    Not a bare JSON object: tifffile would read that as its own shape metadata.

    Examples
    --------
    >>> record_description({"complete": True})
    'embedseg predict {"complete": true}'
    """
    return f"{_TIFF_RECORD}{json.dumps(record, ensure_ascii=True)}"


def read_output_record(output: Path) -> dict[str, Any] | None:
    """The record a finished output holds of how it was made, None where it holds none."""
    record: Any = None
    if output.is_dir():
        try:
            record = zarr.open_group(output, mode="r").attrs.asdict().get("embedseg")
        except (OSError, ValueError, zarr.errors.NodeTypeValidationError):
            return None
    elif output.suffix.lower() in (".tif", ".tiff"):
        description = read_tiff_description(output) or ""
        if not description.startswith(_TIFF_RECORD):
            return None
        try:
            record = json.loads(description.removeprefix(_TIFF_RECORD))
        except ValueError:
            return None
    return record if isinstance(record, dict) else None


def written_labels(output: Path) -> da.Array | None:
    """The labels of a Zarr output as written (its full-resolution level); None: no such level."""
    if not (output / "0").is_dir():
        return None
    labels: da.Array = da.from_zarr(zarr.open_array(output / "0", mode="r"))  # type: ignore[no-untyped-call]
    return labels
