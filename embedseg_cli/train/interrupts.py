"""Ctrl-C (SIGINT) and SIGTERM (``kill``, SLURM) during training.

Training takes both signals as :class:`KeyboardInterrupt`: at once while an epoch trains and
validates, and only after the block is done while its checkpoints are written, so that a
save is never cut short and what ``resume`` reads is always one epoch's end.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupts"]


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, SLURM) as :class:`KeyboardInterrupt`.

    Both are taken only in the main thread; elsewhere Python's own handling stays.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._holding = False
        self._pending = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._holding:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self._handle) for number in self._SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    @contextlib.contextmanager
    def raised(self) -> Iterator[None]:
        """Either signal raises KeyboardInterrupt at once."""
        with self._installed():
            yield

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Either signal waits until the block is done, then raises KeyboardInterrupt."""
        self._holding, self._pending = True, False
        try:
            with self._installed():
                yield
        finally:
            self._holding = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt
