"""pytest's settings for the whole checkout: the package's doctests and the tests."""

from __future__ import annotations

import importlib.util

import pytest

# The napari plugin imports napari and Qt: without the napari extra there is nothing to
# collect there (tests/napari skips itself).
collect_ignore = [] if importlib.util.find_spec("napari") else ["embedseg_cli/napari"]


@pytest.fixture(autouse=True, scope="session")
def use_leak_safe_log_records() -> None:
    """Keep the standard log records where napari's pytest plugin is installed.

    Its fixture of this name makes records that turn their arguments into strings (to find
    leaked napari objects), which breaks ``%d`` with a NumPy integer in the package's logs.
    """
