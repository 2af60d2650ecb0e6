"""The reader: predicted OME-Zarr labels and project stores opened in a real napari viewer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

napari = pytest.importorskip("napari", reason="the napari extra is not installed")

from embedseg_cli.cli import app
from embedseg_cli.config import PredictConfig, PrepareConfig
from embedseg_cli.io.ome_zarr_image import write_ome_zarr_image
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.napari import _reader
from embedseg_cli.napari._reader import MAX_STORE_IMAGES, get_reader
from embedseg_cli.predict import predict
from embedseg_cli.prepare import prepare
from tests.conftest import disks, write_pair
from tests.napari.images import CENTRES, nuclei

PLUGIN = "embedseg-cli"


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labels written by `embedseg predict` for an image of 0.5 (y) x 0.25 (x) um pixels."""
    folder = tmp_path_factory.mktemp("predicted")
    image = folder / "nuclei.tif"
    tifffile.imwrite(
        image, nuclei(), imagej=True, resolution=(1 / 0.25, 1 / 0.5), metadata={"unit": "um"}
    )
    out = folder / "labels.zarr"
    # The CLI points the package's logger at its own stderr; tests/conftest.py restores it
    # after each test, but this fixture outlives the test that makes it.
    logger = logging.getLogger("embedseg_cli")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        result = CliRunner().invoke(app, ["predict", str(image), "--out", str(out), "--no-tta"])
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared store of 2D images (1 (y) x 2 (x) pixels), one test image with a prediction."""
    folder = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(3)
    for split, names in {"train": ("a", "b"), "val": ("c",), "test": ("d", "e")}.items():
        for name in names:
            image, mask = disks((40, 48), 3, rng)
            write_pair(
                folder / "src" / split,
                name,
                image,
                mask,
                resolution=(0.5e4, 1.0e4),
                resolutionunit="CENTIMETER",
            )
    path = folder / "p.zarr"
    prepare(PrepareConfig(source=folder / "src", out=path, crop_size=(32,)))
    labels = np.zeros((40, 48), np.uint32)
    labels[5:15, 5:15] = 1
    ProjectStore.open(path).write_prediction("e", labels)
    return path


def test_reader_opens_predicted_labels_with_their_voxel_size(viewer: Any, predicted: Path) -> None:
    layers = viewer.open(str(predicted), plugin=PLUGIN)

    (layer,) = layers
    assert isinstance(layer, napari.layers.Labels)
    assert layer.name == "labels"
    assert tuple(layer.scale) == (0.5, 0.25)
    data = np.asarray(layer.data)
    assert data.shape == (128, 128)
    assert len({int(data[y, x]) for y, x in CENTRES} - {0}) == len(CENTRES)


def test_reader_opens_labels_written_into_an_ome_zarr_image(viewer: Any, tmp_path: Path) -> None:
    image = tmp_path / "nuclei.zarr"
    write_ome_zarr_image(image, nuclei(), axes="YX", voxel_size=(0.3, 0.3))
    predict(PredictConfig(input=image, tta=False))

    # The image itself is not ours to read: napari-ome-zarr opens it with its labels.
    assert get_reader(str(image)) is None
    (layer,) = viewer.open(str(image / "labels" / "embedseg"), plugin=PLUGIN)
    assert isinstance(layer, napari.layers.Labels)
    assert layer.name == "nuclei embedseg"
    assert tuple(layer.scale) == (0.3, 0.3)
    assert int(np.asarray(layer.data).max()) == len(CENTRES)


def test_reader_opens_a_project_store(viewer: Any, store: Path) -> None:
    layers = viewer.open(str(store), plugin=PLUGIN)

    by_name = {layer.name: layer for layer in layers}
    # Images with predictions first, each with its mask (and prediction).
    assert [layer.name for layer in layers][:3] == ["e", "e mask", "e prediction"]
    assert set(by_name) == {
        *"abcde",
        *(f"{n} mask" for n in "abcde"),
        "e prediction",
    }
    assert isinstance(by_name["a"], napari.layers.Image)
    assert isinstance(by_name["a mask"], napari.layers.Labels)
    assert isinstance(by_name["e prediction"], napari.layers.Labels)
    for layer in layers:
        assert tuple(layer.scale) == (1.0, 2.0)  # Y, X from the TIFFs' resolution (X, Y)
        assert layer.visible == layer.name.startswith("e")  # only the first image is shown
    opened = ProjectStore.open(store)
    np.testing.assert_array_equal(np.asarray(by_name["a"].data), opened.image("a")[...])
    np.testing.assert_array_equal(np.asarray(by_name["a mask"].data), opened.mask("a")[...])
    assert int(np.asarray(by_name["e prediction"].data).max()) == 1


def test_reader_opens_the_first_images_of_a_large_store(
    viewer: Any, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(_reader, "MAX_STORE_IMAGES", 2)
    monkeypatch.setattr(_reader, "show_warning", warnings.append)

    layers = viewer.open(str(store), plugin=PLUGIN)

    assert [layer.name for layer in layers] == ["e", "e mask", "e prediction", "a", "a mask"]
    expected = (
        f"{store} holds 5 images: opened 2 (those with predictions first); "
        f"open {store}/images/NAME for another"
    )
    assert warnings == [expected]


def test_reader_opens_one_image_of_a_store(viewer: Any, store: Path) -> None:
    layers = viewer.open(str(store / "masks" / "d"), plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["d", "d mask"]
    assert all(layer.visible for layer in layers)


def test_reader_leaves_other_paths_to_other_readers(tmp_path: Path, predicted: Path) -> None:
    tiff = tmp_path / "image.tif"
    tifffile.imwrite(tiff, nuclei())
    plain = tmp_path / "folder.zarr"
    plain.mkdir()
    assert get_reader(str(tiff)) is None
    assert get_reader(str(plain)) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    assert get_reader([str(predicted), str(predicted)]) is None
    assert get_reader([str(predicted)]) is not None
    assert MAX_STORE_IMAGES >= 5
