"""What an export may write at ``--out``, and writing it all or nothing.

Every export is written into a hidden sibling of ``--out`` first and renamed into place
(:func:`embedseg_cli.io.atomic.staged`). An existing output is replaced only with
``--overwrite``, only where it is an earlier output of the same kind (never a folder of
other files, nor one that holds an input), and is left untouched when anything fails
before that rename.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.atomic import cannot_write, staged
from embedseg_cli.io.guards import check_output_apart
from embedseg_cli.io.ome_zarr import is_ome_zarr_label_image

__all__ = ["Output", "claim", "staged_output"]

logger = logging.getLogger(__name__)

_TORCH_WRITE_FAILURES = ("open file failed", "file write failed", "PytorchStreamWriter failed")
"""Texts of torch's RuntimeError for a file it could not open or write."""


@dataclass(frozen=True)
class Output:
    """What an export writes at ``--out``, so that only an earlier one is ever replaced.

    ``layout`` is ``"file"`` (one file), ``"ome-zarr"`` (one OME-Zarr label image) or
    ``"folder"`` (a folder of ``*suffix`` entries, files or, for ``.zarr``, label images).
    """

    what: str
    layout: Literal["file", "ome-zarr", "folder"]
    suffix: str = ""

    def check_replaceable(self, out: Path) -> None:
        """Refuse to replace anything at ``out`` but an earlier output of this kind.

        Raises
        ------
        OutputExistsError
            Where ``out`` exists and is not what this export writes.
        """
        if not out.exists() and not out.is_symlink():
            return
        problem = None
        if self.layout == "file":
            if out.is_dir():
                problem = "is a folder"
        elif not out.is_dir() or out.is_symlink():
            problem = "is not a folder"
        elif self.layout == "ome-zarr":
            if any(out.iterdir()) and not is_ome_zarr_label_image(out):
                problem = "is not an OME-Zarr label image written by an export"
        else:
            problem = next(
                (
                    f"holds {entry.name}, which this export does not write"
                    for entry in sorted(out.iterdir())
                    if not self._writes(entry)
                ),
                None,
            )
        if problem is not None:
            msg = (
                f"{out} {problem}: --overwrite replaces only an earlier export of {self.what}; "
                "choose another --out, or remove it yourself"
            )
            raise OutputExistsError(msg)

    def _writes(self, entry: Path) -> bool:
        """Whether an entry of an output folder is one this export writes."""
        if entry.suffix != self.suffix or entry.is_symlink():
            return False
        if self.suffix == ".zarr":
            return entry.is_dir() and is_ome_zarr_label_image(entry)
        return entry.is_file()


def claim(out: Path, overwrite: bool, output: Output, inputs: dict[str, Path | None]) -> None:
    """Check, before anything is written, that ``out`` may be written.

    Raises
    ------
    InputError
        Where ``out`` is one of ``inputs`` or holds one.
    OutputExistsError
        Where ``out`` exists and is not an earlier output of this kind, or exists and
        ``overwrite`` is not set.
    """
    check_output_apart(out, inputs)
    output.check_replaceable(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        msg = f"{out} already exists: pass --overwrite to replace it, or choose another --out"
        raise OutputExistsError(msg)


@contextmanager
def staged_output(out: Path, output: Output) -> Iterator[Path]:
    """A hidden sibling path to write to; renamed to ``out`` when the block succeeds.

    What is at ``out`` is checked again just before it is replaced, in case it changed
    while the export ran. A failed write is one line that names ``out``.

    Raises
    ------
    InputError
        Where the output cannot be written (permissions, space).
    OutputExistsError
        Where something that is no earlier output of this kind appeared at ``out``.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the folder of {out} ({exc.strerror or exc}): check the path"
        raise InputError(msg) from None
    try:
        with staged(out, check=output.check_replaceable) as staging:
            yield staging
    except OSError as exc:
        raise cannot_write(out, exc, "check that its folder is writable and has space") from None
    except RuntimeError as exc:
        # torch's writers (jit.save, save) report a failed open or write as a RuntimeError.
        if not any(text in str(exc) for text in _TORCH_WRITE_FAILURES):
            raise
        logger.debug("writing %s: %s", out, exc)
        reason = str(exc).rsplit("strerror:", 1)[-1].strip() if "strerror:" in str(exc) else ""
        msg = f"cannot write {out} ({reason or 'the write failed'}): check that its folder is writable and has space"
        raise InputError(msg) from None
