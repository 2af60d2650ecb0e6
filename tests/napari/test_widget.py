"""The segmentation widget in a real napari viewer, with the built-in nuclei model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

napari = pytest.importorskip("napari", reason="the napari extra is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from embedseg_cli.napari import _widget
from embedseg_cli.napari._widget import MODEL_FILE, STORE, SegmentWidget
from tests.napari.images import CENTRES, nuclei


def _dock(viewer: Any) -> SegmentWidget:
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)  # fills the image choices, as the Plugins menu does
    return widget


def test_widget_segments_the_image_layer_with_the_builtin_model(viewer: Any, qtbot: Any) -> None:
    layer = viewer.add_image(nuclei(), name="nuclei", scale=(0.5, 0.5), translate=(10.0, 20.0))
    widget = _dock(viewer)
    assert widget.image.value is layer
    assert widget.model.value == "dsb2018-fluo"

    widget.segment()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)

    labels = viewer.layers["nuclei labels"]
    assert isinstance(labels, napari.layers.Labels)
    assert labels.data.shape == (128, 128)
    assert labels.data.dtype == np.uint32
    found = {int(labels.data[y, x]) for y, x in CENTRES}
    assert 0 not in found
    assert len(found) == len(CENTRES)  # one object per nucleus
    assert int(labels.data.max()) == len(CENTRES)  # and no others
    assert tuple(labels.scale) == (0.5, 0.5)
    assert tuple(labels.translate) == (10.0, 20.0)
    assert widget.status.value == "nuclei labels: 5 objects"


def test_the_plugins_menu_opens_the_widget_with_the_viewer(viewer: Any) -> None:
    """The manifest, found through the package's entry point, names the widget."""
    _, widget = viewer.window.add_plugin_dock_widget("embedseg-cli", "Segment (EmbedSeg)")
    assert isinstance(widget, SegmentWidget)
    viewer.add_image(nuclei(), name="nuclei")
    assert widget.image.value is viewer.layers["nuclei"]


def test_widget_cancel_stops_the_job(
    viewer: Any, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    viewer.add_image(nuclei(), name="nuclei")
    widget = _dock(viewer)

    widget.segment()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)

    assert "nuclei labels" not in viewer.layers
    assert [layer.name for layer in viewer.layers] == ["nuclei"]
    assert widget.status.value == "cancelled: no labels added"
    assert widget.segment_button.enabled
    assert not widget.cancel_button.enabled
    assert list(tmp_path.iterdir()) == []  # the scratch copy and the labels are gone


def test_widget_passes_its_controls_to_predict(
    viewer: Any, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_predict_array(image: Any, **kwargs: Any) -> NDArray[np.uint32]:
        calls.append({"shape": image.shape, **kwargs})
        return np.full(image.shape[:2], len(calls), dtype=np.uint32)

    monkeypatch.setattr(_widget, "predict_array", fake_predict_array)
    rgb = np.zeros((32, 48, 3), np.uint8)
    viewer.add_image(rgb, name="cells", rgb=True, scale=(2.0, 2.0), units=("nm", "nm"))
    widget = _dock(viewer)
    store = tmp_path / "project.zarr"
    store.mkdir()
    assert not widget.model_path.native.isVisibleTo(widget.native)
    widget.model.value = STORE
    assert widget.model_path.native.isVisibleTo(widget.native)
    widget.segment()
    assert not widget.running
    assert widget.status.value == "choose the project store (a .zarr folder) under path"
    widget.model_path.value = store
    widget.seed_threshold.value = 0.8
    widget.min_object_size.value = 25
    widget.tta.value = False
    assert not widget.object_diameter.native.isVisibleTo(widget.native)
    widget.object_size.value = "diameter"
    assert widget.object_diameter.native.isVisibleTo(widget.native)
    widget.object_diameter.value = 31.5

    for _ in range(2):
        widget.segment()
        qtbot.waitUntil(lambda: not widget.running, timeout=10_000)

    options = calls[0]
    assert options["shape"] == (32, 48, 3)
    assert options["axes"] == "YXC"
    assert options["voxel_size"] == pytest.approx((0.002, 0.002))  # in µm
    assert options["model"] == str(store)
    assert options["seed_threshold"] == pytest.approx(0.8)
    assert options["foreground_threshold"] is None  # "model's"
    assert options["min_object_size"] == 25
    assert options["tta"] is False
    assert options["object_size"] == pytest.approx(31.5)
    # A second run replaces the labels of the first.
    assert [layer.name for layer in viewer.layers] == ["cells", "cells labels"]
    assert int(viewer.layers["cells labels"].data.max()) == 2
    assert tuple(viewer.layers["cells labels"].scale) == (2.0, 2.0)

    widget.model.value = MODEL_FILE
    assert widget.model_path.mode.value == "r"
    for choice, expected in (("default", None), ("auto", "auto"), ("off", "off")):
        widget.object_size.value = choice
        assert widget.object_size_choice() == expected


def test_widget_reports_a_model_that_does_not_fit(viewer: Any, qtbot: Any) -> None:
    viewer.add_image(np.zeros((4, 32, 32), np.uint8), name="stack")
    widget = _dock(viewer)
    widget.segment()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)

    assert widget.status.value.startswith("failed: ")
    assert "the model takes 2D images" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["stack"]
