"""The plugin's manifest, found through the package's entry point, and what it imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

npe2 = pytest.importorskip("npe2", reason="the napari extra is not installed")
pytest.importorskip("napari", reason="the napari extra is not installed")

from npe2.manifest.utils import import_python_name


def test_manifest_is_found_through_the_entry_point_and_valid() -> None:
    manifest = npe2.PluginManifest.from_distribution("embedseg-cli")
    assert manifest.name == "embedseg-cli"
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets or []] == ["Segment (EmbedSeg)"]
    (reader,) = contributions.readers or []
    assert reader.accepts_directories
    # Every command names a callable that imports (as `npe2 validate` checks).
    commands = contributions.commands or []
    assert len(commands) == 2
    for command in commands:
        assert command.python_name is not None
        assert callable(import_python_name(command.python_name))


def test_the_package_the_cli_and_predict_import_no_napari_or_qt() -> None:
    code = (
        "import sys\n"
        "import embedseg_cli, embedseg_cli.cli, embedseg_cli.predict, embedseg_cli.napari\n"
        "gui = sorted(m for m in ('napari', 'qtpy', 'magicgui', 'PyQt6', 'PySide6') "
        "if m in sys.modules)\n"
        "assert not gui, gui\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
