"""Guarding outputs: never an input, never written by two runs at once.

An output is never an input (:func:`check_output_apart`), and a run holds a lock on its
output while it writes (:func:`lock_output`), so that a second run into the same place
refuses instead of mixing results (``DESIGN.md``, decision 8).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from embedseg_cli.errors import InputError, OutputLockedError

__all__ = ["check_output_apart", "lock_output"]


def check_output_apart(
    out: Path, inputs: Mapping[str, Path | None], *, option: str = "--out"
) -> None:
    """Refuse an output path that is one of the inputs, holds one or lies inside one.

    Replacing such an output (``--overwrite``) would delete the inputs with it, and an
    output written inside an input changes that input (a folder of images gains a file the
    next run reads as an image). Paths are compared resolved, so relative paths and
    symbolic links cannot hide an overlap.

    Parameters
    ----------
    out : Path
        The path the command writes (it need not exist).
    inputs : mapping of str to Path or None
        The command's inputs by the name the user knows them by (``"SRC"``, ``"--image"``);
        None values are skipped.
    option : str
        How the message names ``out``: the option that gave it (``"--table"``) or what it
        is (``"the work folder"``).

    Raises
    ------
    InputError
        Where ``out`` is an input, an ancestor of one or inside one.

    Examples
    --------
    >>> check_output_apart(Path("results/labels.tif"), {"PRED": Path("predictions")})
    """
    target = out.resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        source = path.resolve()
        if target == source:
            msg = (
                f"{option} {out} is the input {name} {path}: choose another {option} "
                "(an output never replaces an input)"
            )
            raise InputError(msg)
        if target in source.parents:
            msg = (
                f"{option} {out} contains the input {name} {path}: choose an {option} outside "
                "it (replacing it would delete the input)"
            )
            raise InputError(msg)
        if source in target.parents:
            msg = (
                f"{option} {out} is inside the input {name} {path}: choose an {option} outside "
                "it (an output never changes an input)"
            )
            raise InputError(msg)


@contextlib.contextmanager
def lock_output(lock: Path, output: Path) -> Iterator[None]:
    """Hold ``lock`` (an OS file lock) while writing ``output``, or refuse at once.

    The lock file names the holder (process id, host, start time) for the refusal message.
    The operating system releases the lock when the process ends, killed or not, so a lock
    file left by a dead run is taken over. The file is removed on release while still
    held, and a lock taken on a file that was removed meanwhile is taken again on the new
    file, so two processes never hold the lock of one path at once. ``flock`` locks are
    reliable on local disks; on network file systems they are as reliable as the server.

    Raises
    ------
    OutputLockedError
        Where another process holds the lock.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _holder(fd)
            finally:
                os.close(fd)
            msg = (
                f"{output} is being written by another run ({holder}): wait for it to finish, "
                "or choose another --out"
            )
            raise OutputLockedError(msg) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds a lock: the line its holder writes just after taking it.

    A run that took the lock a moment ago may not have written that line yet: wait for it
    briefly rather than name nobody.
    """
    for _ in range(20):
        text = os.pread(fd, 1024, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "another process"
