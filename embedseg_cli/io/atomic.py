"""Writing an output all or nothing: into a hidden sibling, then renamed into place.

Every output embedseg writes that way (TIFF, PNG and CSV files, OME-Zarr label images,
exported models and packages, the project store and the groups inside it) goes through
:func:`staged` or :func:`staging`, so a run killed at any point leaves either the earlier
output or the new one, never a part of one that a later run would trust.

The staging path is ``.<name>.incomplete-<pid>-<random>`` beside the target: hidden, so that
a folder of outputs read as input skips it, and named after the process, so that a later
run removes what a killed run left behind without touching the staging of a run still
going. What may be replaced is the caller's decision, checked before anything is written;
``check`` repeats it just before the rename, in case something appeared meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from embedseg_cli.errors import InputError

__all__ = [
    "Staging",
    "cannot_write",
    "remove_path",
    "remove_stale",
    "replace_path",
    "shown_path",
    "staged",
    "staging",
]

logger = logging.getLogger(__name__)

_MARK = ".incomplete-"
_STAGING_NAME = re.compile(r"^\.(.+)\.incomplete-\d+-[0-9a-f]{8}$")


class Staging:
    """A hidden sibling of ``target`` to write into, and the rename that publishes it.

    Obtain one with :func:`staging`.

    Attributes
    ----------
    target : Path
        Where the output goes.
    path : Path
        Where it is written meanwhile (not created here: a file or a folder, as the writer
        likes).
    committed : bool
        Whether :meth:`commit` has put ``path`` in place of ``target``.
    """

    def __init__(self, target: Path, check: Callable[[Path], None] | None = None) -> None:
        self.target = target
        self.path = target.parent / f".{target.name}{_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.committed = False
        self._check = check

    def commit(self) -> None:
        """Put what was written at :attr:`path` in place of :attr:`target`.

        Raises
        ------
        OutputExistsError
            Where ``check`` refuses what is at the target now.
        OSError
            Where the rename fails; the earlier output is then left in place.
        """
        if self._check is not None and (self.target.exists() or self.target.is_symlink()):
            self._check(self.target)
        replace_path(self.path, self.target)
        self.committed = True


@contextlib.contextmanager
def staging(target: Path, *, check: Callable[[Path], None] | None = None) -> Iterator[Staging]:
    """A :class:`Staging` for ``target``; removed at the end of the block unless committed.

    Use it where the writer decides when its output is complete (the project store is
    committed by its writer); otherwise use :func:`staged`. Staging paths of ``target``
    left by processes that are gone are removed first. The folder of ``target`` must exist.

    Parameters
    ----------
    target : Path
        The output.
    check : callable, optional
        Called with ``target`` just before it is replaced, where it exists: raises where
        what is there now may not be replaced.
    """
    remove_stale(target)
    stage = Staging(target, check)
    try:
        yield stage
    finally:
        if not stage.committed:
            remove_path(stage.path)


@contextlib.contextmanager
def staged(target: Path, *, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A hidden sibling path to write to, renamed to ``target`` when the block succeeds.

    On any failure (an exception in the block, a refused ``check``, a failed rename) the
    staging path is removed and whatever was at ``target`` is left as it was. An earlier
    output at ``target`` is replaced (see :func:`replace_path`): the caller has decided
    before that it may be. The folder of ``target`` must exist.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with staged(folder / "a.txt") as path:
    ...     _ = path.write_text("done")
    >>> [p.name for p in folder.iterdir()], (folder / "a.txt").read_text()
    (['a.txt'], 'done')
    """
    with staging(target, check=check) as stage:
        yield stage.path
        stage.commit()


def replace_path(staging: Path, target: Path) -> None:
    """Put ``staging`` (a file or folder) in place of ``target``, which is kept on failure."""
    if not target.exists() and not target.is_symlink():
        staging.rename(target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        old.rename(target)
        raise
    remove_path(old)


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree, if there is one; errors are ignored."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def remove_stale(target: Path) -> None:
    """Remove the staging paths of ``target`` left behind by processes that are gone."""
    prefix = f".{target.name}{_MARK}"
    try:
        with os.scandir(target.parent) as scan:
            names = [entry.name for entry in scan if entry.name.startswith(prefix)]
    except OSError:
        return
    for name in names:
        entry = target.parent / name
        pid_text = name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            logger.info("removing %s, left by an interrupted run", entry)
            remove_path(entry)
        except (PermissionError, OverflowError):
            pass  # another user's process is alive; an absurd number is not ours


def cannot_write(
    path: Path, exc: OSError, fix: str = "check that its folder is writable"
) -> InputError:
    """The one-line error for an output that could not be written.

    Examples
    --------
    >>> str(cannot_write(Path("out.tif"), PermissionError(13, "Permission denied")))
    'cannot write out.tif (Permission denied): check that its folder is writable'
    """
    return InputError(f"cannot write {shown_path(path)} ({exc.strerror or exc}): {fix}")


def shown_path(path: Path) -> Path:
    """``path`` with each staging folder or file in it named as the output it becomes.

    A writer that writes inside a staging folder (an export of several files) names the
    output the user asked for in its messages, not the hidden staging path.

    Examples
    --------
    >>> shown_path(Path("out/.labels.incomplete-12-0123abcd/a.tif"))
    PosixPath('out/labels/a.tif')
    """
    return Path(*(_STAGING_NAME.sub(r"\1", part) for part in path.parts))
