"""The errors embedseg raises for problems a user can fix.

Every expected failure is an :class:`EmbedsegError`. The command-line interface prints its
message as one line and exits with code 1; anything else is a bug and keeps its traceback.
Each subclass also derives from the matching built-in exception so that library callers can
catch either.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "EmbedsegError",
    "IncompleteStoreError",
    "InputError",
    "NotAStoreError",
    "OptionValueError",
    "OutputExistsError",
    "OutputLockedError",
    "SchemaVersionError",
    "StoreError",
    "StoreNotFoundError",
]


class EmbedsegError(Exception):
    """Base class of the errors a user can act on; the message says what to do."""


class InputError(EmbedsegError, ValueError):
    """An input file or folder is missing, unreadable or inconsistent."""


class OptionValueError(EmbedsegError, ValueError):
    """An option's value does not fit the input it was given for (a usage error).

    Only the input can tell (an object size larger than the image): the command line exits
    with code 2, as for an option out of its range.
    """


class OutputExistsError(EmbedsegError, FileExistsError):
    """An output exists and the command was not told to overwrite it."""


class OutputLockedError(OutputExistsError):
    """Another running process is writing the same output (it holds the output's lock)."""


class StoreError(EmbedsegError, ValueError):
    """A project store cannot be used as it is."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """There is no project store at the given path."""


class NotAStoreError(StoreError):
    """The path is a Zarr store (or a folder) but not an embedseg project store."""


class SchemaVersionError(StoreError):
    """The store was written with a layout version this embedseg does not know."""


class CheckpointError(StoreError):
    """A checkpoint is damaged (a tensor missing, altered or not finite) or cannot be written."""


class IncompleteStoreError(StoreError):
    """The store (or one of its steps) was left incomplete by an interrupted run."""
