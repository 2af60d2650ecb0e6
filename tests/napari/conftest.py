"""The napari tests' display: a real one, a virtual X server (Xvfb), or a clear skip.

napari draws its canvas with OpenGL. Qt's ``offscreen`` platform has no OpenGL widgets, so
a viewer there cannot add a layer; where there is no display, these tests start Xvfb when
the machine has it (``apt-get install xvfb``), and skip with the reason otherwise. Whether
Qt can start at all (its ``xcb`` platform needs some X libraries) is tried in a child
process first, because Qt aborts the process where it cannot.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

_PROBE = "from qtpy.QtWidgets import QApplication; QApplication([]); print('ok')"


def _start_xvfb() -> str | None:
    """Start a virtual X server for this test run; its display, or None where it fails."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None
    read, write = os.pipe()
    server = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # written once the server accepts clients
    if not number:
        server.kill()
        return None
    atexit.register(server.terminate)
    return f":{number}"


def _display_problem() -> str | None:
    """Why napari cannot draw here (after starting Xvfb where needed), None where it can."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        display = _start_xvfb()
        if display is None:
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
            return (
                "no display and no Xvfb: napari's canvas needs OpenGL, which Qt's offscreen "
                "platform lacks (install Xvfb: apt-get install xvfb)"
            )
        os.environ["DISPLAY"] = display
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0 or "ok" not in probe.stdout:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        lines = probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"]
        return f"Qt cannot start a QApplication here: {lines[0]}"
    return None


# Only where napari is installed: the test modules skip themselves otherwise.
_PROBLEM = _display_problem() if importlib.util.find_spec("napari") else "napari is not installed"


@pytest.fixture
def viewer(request: pytest.FixtureRequest) -> Any:
    """A real napari viewer (not shown), or a skip saying why there can be none."""
    if _PROBLEM is not None:
        pytest.skip(_PROBLEM)  # before napari's fixture, whose teardown expects a test run
    make_napari_viewer: Callable[..., Any] = request.getfixturevalue("make_napari_viewer")
    return make_napari_viewer()
