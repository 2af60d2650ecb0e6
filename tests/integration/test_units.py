"""Voxel sizes read in their units and converted to micrometres; labels written calibrated.

TIFF (OME-XML, ImageJ, resolution tags) and OME-Zarr inputs in nm, µm, cm, inches or no
unit at all; predict's resampling decided in micrometres on both sides; TIFF and OME-Zarr
labels that Fiji, tifffile and ome-zarr read back with their voxel size, or without one.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from numpy.typing import NDArray

from embedseg_cli.config import ExportLabelsConfig, PredictConfig
from embedseg_cli.export import export_labels
from embedseg_cli.io.models import read_model, write_compact
from embedseg_cli.io.ome_zarr import write_ome_zarr_labels
from embedseg_cli.io.tiff import read_tiff, read_tiff_description, write_labels_tiff
from embedseg_cli.io.volumes import open_volume
from embedseg_cli.io.work import read_output_record
from embedseg_cli.predict import predict
from tests.conftest import disks

LOOSE = {"seed_threshold": 0.5, "foreground_threshold": 0.45, "min_object_size": 0}
SMALL = {"tile_size": (64,), "overlap": (16,), "block_size": (64,), "tta": False}


@pytest.fixture(scope="module")
def ome() -> SimpleNamespace:
    """The ome-zarr package's reader and writer (skips where it is not installed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ome-zarr's own, at import
        io = pytest.importorskip("ome_zarr.io")
        reader = pytest.importorskip("ome_zarr.reader")
        writer = pytest.importorskip("ome_zarr.writer")
    return SimpleNamespace(
        parse_url=io.parse_url,
        Reader=reader.Reader,
        Label=reader.Label,
        write_image=writer.write_image,
    )


def _config(model: Path | str, image: Path, out: Path | None, **options: object) -> PredictConfig:
    return PredictConfig(
        input=image, model=str(model), out=out, device="cpu", **{**LOOSE, **SMALL, **options}
    )


def _pixels(seed: int = 3) -> NDArray[np.uint16]:
    return disks((40, 40), 3, np.random.default_rng(seed))[0]


# Reading TIFF voxel sizes ---------------------------------------------------------------------

STACK = np.zeros((3, 8, 8), np.uint16)
PLANES = {"photometric": "minisblack"}  # three planes, not one RGB image

TIFFS: dict[str, tuple[dict[str, Any], dict[str, float]]] = {
    "ome-nm": (
        {
            "ome": True,
            "metadata": {
                "axes": "ZYX",
                "PhysicalSizeX": 250,
                "PhysicalSizeXUnit": "nm",
                "PhysicalSizeY": 250,
                "PhysicalSizeYUnit": "nm",
                "PhysicalSizeZ": 1,
                "PhysicalSizeZUnit": "\u00b5m",
            },
        },
        {"Z": 1.0, "Y": 0.25, "X": 0.25},
    ),
    # OME's schema makes micrometres the unit where none is named.
    "ome-default-unit": (
        {"ome": True, "metadata": {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}},
        {"Y": 0.5, "X": 0.5},
    ),
    "imagej-nm": (
        {
            "imagej": True,
            "resolution": (1 / 200, 1 / 200),  # pixels per nm
            "metadata": {"axes": "ZYX", "unit": "nm", "spacing": 1500},
        },
        {"Z": 1.5, "Y": 0.2, "X": 0.2},
    ),
    "imagej-micron": (
        {
            "imagej": True,
            "resolution": (4.0, 2.0),
            "metadata": {"axes": "ZYX", "unit": "micron", "spacing": 2},
        },
        {"Z": 2.0, "Y": 0.5, "X": 0.25},
    ),
    "tags-centimetre": (
        {"resolution": (25_000, 25_000), "resolutionunit": "CENTIMETER"},
        {"Y": 0.4, "X": 0.4},
    ),
    # 50800 pixels per inch: a 0.5 µm pixel, a calibration (not a print resolution).
    "tags-fine-inch": (
        {"resolution": (50_800, 50_800), "resolutionunit": "INCH"},
        {"Y": 0.5, "X": 0.5},
    ),
}


@pytest.mark.parametrize("case", list(TIFFS))
def test_tiff_voxel_size_in_micrometres(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    options, expected = TIFFS[case]
    path = tmp_path / f"{case}.tif"
    tifffile.imwrite(path, STACK, **{**PLANES, **options})
    with caplog.at_level(logging.WARNING):
        assert read_tiff(path).voxel_size == pytest.approx(expected)
        assert open_volume(path).voxel_size == pytest.approx(expected)
    assert not caplog.records


UNKNOWN: dict[str, tuple[dict[str, Any], str | None]] = {
    "imagej-without-unit": (
        {"imagej": True, "resolution": (2.0, 2.0), "metadata": {"axes": "ZYX", "spacing": 3}},
        "without a unit",
    ),
    "tags-resunit-none": ({"resolution": (2.0, 2.0), "resolutionunit": "NONE"}, "without a unit"),
    "ome-unknown-unit": (
        {
            "ome": True,
            "metadata": {"axes": "ZYX", "PhysicalSizeX": 2, "PhysicalSizeXUnit": "pixel"},
        },
        "'pixel', which is no length unit",
    ),
    "screenshot-72dpi": ({"resolution": (72, 72), "resolutionunit": "INCH"}, "print resolution"),
    "figure-300dpi-cm": (
        {"resolution": (300 / 2.54, 300 / 2.54), "resolutionunit": "CENTIMETER"},
        "print resolution",
    ),
    "imagej-inch-96dpi": (
        {"imagej": True, "resolution": (96, 96), "metadata": {"axes": "ZYX", "unit": "inch"}},
        "print resolution",
    ),
    # What tifffile writes where it is given no resolution: nothing to warn about.
    "tifffile-default": ({}, None),
}


@pytest.mark.parametrize("case", list(UNKNOWN))
def test_a_size_without_a_known_unit_is_unknown_never_microns(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    options, warning = UNKNOWN[case]
    path = tmp_path / f"{case}.tif"
    tifffile.imwrite(path, STACK, **{**PLANES, **options})
    with caplog.at_level(logging.WARNING):
        assert read_tiff(path).voxel_size == {}
    if warning is None:
        assert not caplog.records
    else:
        assert len(caplog.records) == 1
        assert str(path) in caplog.text
        assert warning in caplog.text
        assert "taken as unknown" in caplog.text


# Reading OME-Zarr voxel sizes -----------------------------------------------------------------


def _ome_zarr_image(
    ome: SimpleNamespace,
    path: Path,
    data: NDArray[Any],
    axes: str,
    scale: dict[str, float],
    units: dict[str, str],
) -> Path:
    kinds = {"c": "channel", "t": "time"}
    ome.write_image(
        data,
        zarr.open_group(path, mode="w"),
        axes=[
            {"name": a, "type": kinds.get(a, "space"), **({"unit": units[a]} if a in units else {})}
            for a in axes
        ],
        scale=scale,
        scale_factors=[],
    )
    return path


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ({"z": "nanometer", "y": "nanometer", "x": "nanometer"}, {"Z": 2.0, "Y": 0.1, "X": 0.1}),
        (
            {"z": "micrometer", "y": "micrometer", "x": "micrometer"},
            {"Z": 2000, "Y": 100, "X": 100},
        ),
        ({"y": "nanometer", "x": "nanometer"}, {"Y": 0.1, "X": 0.1}),
        ({}, {}),
    ],
    ids=["nanometer", "micrometer", "z-without-unit", "no-units"],
)
def test_ome_zarr_voxel_size_from_axis_units(
    tmp_path: Path,
    ome: SimpleNamespace,
    units: dict[str, str],
    expected: dict[str, float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = _ome_zarr_image(
        ome,
        tmp_path / "image.zarr",
        np.zeros((4, 16, 16), np.uint8),
        "zyx",
        {"z": 2000.0, "y": 100.0, "x": 100.0},
        units,
    )
    with caplog.at_level(logging.WARNING):
        assert open_volume(path).voxel_size == pytest.approx(expected)
    missing = [a for a in "zyx" if a not in units]
    if missing:
        assert str(path) in caplog.text
        assert f"{missing[0]} (" in caplog.text
        assert "taken as unknown" in caplog.text
    else:
        assert not caplog.records


# predict resamples in micrometres -------------------------------------------------------------


@pytest.fixture(scope="module")
def half_micron_model(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny trained model, said to be trained on 0.5 µm pixels."""
    trained = read_model(model_store)
    attrs = {**trained.attrs, "data": {**trained.attrs["data"], "voxel_size": [0.5, 0.5]}}
    path = tmp_path_factory.mktemp("model") / "m.npz"
    return write_compact(type(trained)(trained.tensors, attrs, "test"), path)


def _imagej_nm(path: Path, nanometres: float) -> Path:
    tifffile.imwrite(
        path,
        _pixels(),
        imagej=True,
        resolution=(1 / nanometres, 1 / nanometres),
        metadata={"unit": "nm"},
    )
    return path


def test_an_input_in_nm_of_the_models_size_in_um_is_not_resampled(
    half_micron_model: Path, tmp_path: Path
) -> None:
    image = _imagej_nm(tmp_path / "nm.tif", 500)  # 500 nm = the model's 0.5 µm
    plan = predict(_config(half_micron_model, image, tmp_path / "a.tif", dry_run=True)).plans[0]
    assert plan["input_shape"] == plan["shape"] == [40, 40]


def test_an_input_in_nm_of_another_size_is_resampled_to_the_models(
    half_micron_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = _imagej_nm(tmp_path / "nm.tif", 1000)  # 1 µm pixels for a model of 0.5 µm
    with caplog.at_level(logging.INFO):
        plan = predict(_config(half_micron_model, image, tmp_path / "a.tif", dry_run=True))
    assert plan.plans[0]["input_shape"] == [40, 40]
    assert plan.plans[0]["shape"] == [80, 80]
    assert "from voxel size 1, 1 µm to the model's 0.5, 0.5 µm" in caplog.text


def test_a_72_dpi_screenshot_is_not_resampled(
    half_micron_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = tmp_path / "screenshot.tif"
    tifffile.imwrite(image, _pixels(), resolution=(72, 72), resolutionunit="INCH")
    with caplog.at_level(logging.WARNING):
        plan = predict(_config(half_micron_model, image, tmp_path / "a.tif", dry_run=True))
    assert plan.plans[0]["shape"] == [40, 40]
    assert "print resolution" in caplog.text


# Calibrated outputs ---------------------------------------------------------------------------


def test_predicted_tiff_carries_the_voxel_size_fiji_reads_and_still_resumes(
    model_store: Path, tmp_path: Path
) -> None:
    image = _imagej_nm(tmp_path / "nm.tif", 250)
    out = tmp_path / "labels.tif"
    predict(_config(model_store, image, out))

    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.pages.first.dtype == np.uint16
        assert tif.imagej_metadata is not None
        assert tif.imagej_metadata["unit"] == "micron"
        assert tif.pages.first.get_resolution() == pytest.approx((4.0, 4.0))  # pixels per µm
        assert tif.pages.first.resolutionunit == tifffile.RESUNIT.NONE  # as ImageJ writes it
    assert read_tiff(out).voxel_size == pytest.approx({"Y": 0.25, "X": 0.25})
    record = read_output_record(out)
    assert record is not None
    assert record["complete"] is True
    # The record of how it was made lets --resume recognise the finished output.
    before = out.stat().st_mtime_ns
    report = predict(_config(model_store, image, out, resume=True))
    assert report.outputs == []  # already complete: nothing written
    assert out.stat().st_mtime_ns == before


def test_predicted_labels_of_an_unknown_voxel_size_are_written_as_unknown(
    model_store: Path, tmp_path: Path
) -> None:
    image = tmp_path / "plain.tif"
    tifffile.imwrite(image, _pixels())
    out = tmp_path / "labels.tif"
    predict(_config(model_store, image, out))
    with tifffile.TiffFile(out) as tif:
        assert tif.imagej_metadata is not None
        assert "unit" not in tif.imagej_metadata
        assert "spacing" not in tif.imagej_metadata
        assert tif.pages.first.resolutionunit == tifffile.RESUNIT.NONE
        assert tif.pages.first.get_resolution() == (1, 1)
    assert read_tiff(out).voxel_size == {}

    zarr_out = tmp_path / "labels.zarr"
    predict(_config(model_store, image, zarr_out))
    axes = zarr.open_group(zarr_out, mode="r").attrs["ome"]["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == [None, None]


def test_labels_too_many_for_uint16_are_an_ome_tiff_in_micrometres(tmp_path: Path) -> None:
    labels = np.zeros((3, 10, 12), np.uint32)
    labels[1, 2:5, 3:7] = 70_000
    labels[2, 6:9, 1:4] = 5
    out = tmp_path / "labels.tif"
    write_labels_tiff(out, labels, (2.0, 0.5, 0.25), description='embedseg predict {"a": 1}')

    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        assert tif.ome_metadata is not None
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        page = tif.pages.first
        resolution = page.get_resolution()
        unit = page.resolutionunit
        data = tif.asarray()
    assert data.dtype == np.uint32
    np.testing.assert_array_equal(data, labels)
    sizes = {a: (pixels[f"PhysicalSize{a}"], pixels[f"PhysicalSize{a}Unit"]) for a in "ZYX"}
    assert sizes == {"Z": (2.0, "\u00b5m"), "Y": (0.5, "\u00b5m"), "X": (0.25, "\u00b5m")}
    assert unit == tifffile.RESUNIT.CENTIMETER
    assert resolution == pytest.approx((40_000, 20_000))  # pixels per cm in X and Y
    assert read_tiff(out).voxel_size == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.25})
    assert read_tiff_description(out) == 'embedseg predict {"a": 1}'
    assert read_output_record(out) == {"a": 1}

    unknown = tmp_path / "unknown.tif"
    write_labels_tiff(unknown, labels, (None, None, None))
    with tifffile.TiffFile(unknown) as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata or "")["OME"]["Image"]["Pixels"]
        assert not [key for key in pixels if key.startswith("PhysicalSize")]
        assert tif.pages.first.resolutionunit == tifffile.RESUNIT.NONE
    assert read_tiff(unknown).voxel_size == {}


def test_export_converts_an_ome_zarr_in_nanometres_to_a_tiff_in_microns(
    tmp_path: Path, ome: SimpleNamespace
) -> None:
    labels = np.zeros((4, 16, 16), np.uint32)
    labels[1:3, 2:6, 4:9] = 3
    source = _ome_zarr_image(
        ome,
        tmp_path / "labels.zarr",
        labels,
        "zyx",
        {"z": 1500.0, "y": 200.0, "x": 200.0},
        {"z": "nanometer", "y": "nanometer", "x": "nanometer"},
    )
    out = tmp_path / "labels.tif"
    export_labels(ExportLabelsConfig(labels=source, format="tiff", out=out))
    with tifffile.TiffFile(out) as tif:
        assert tif.imagej_metadata is not None
        assert tif.imagej_metadata["unit"] == "micron"
        assert tif.imagej_metadata["spacing"] == pytest.approx(1.5)
    assert read_tiff(out).voxel_size == pytest.approx({"Z": 1.5, "Y": 0.2, "X": 0.2})


# OME-Zarr outputs -----------------------------------------------------------------------------


def _label_node(ome: SimpleNamespace, path: Path) -> Any:
    nodes = [n for n in ome.Reader(ome.parse_url(path))() if n.load(ome.Label) is not None]
    assert len(nodes) == 1
    return nodes[0]


def test_ome_zarr_labels_have_micrometre_axes_where_the_size_is_known(
    tmp_path: Path, ome: SimpleNamespace
) -> None:
    labels = np.zeros((3, 16, 16), np.uint32)
    labels[1, 3:7, 3:9] = 2
    path = tmp_path / "labels.zarr"
    write_ome_zarr_labels(path, labels, axes="ZYX", voxel_size=(None, 0.5, 0.5))
    node = _label_node(ome, path)
    assert node.metadata["axes"] == [
        {"name": "z", "type": "space"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert node.metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": [1.0, 0.5, 0.5]}
    ]
    assert open_volume(path).voxel_size == pytest.approx({"Y": 0.5, "X": 0.5})


@pytest.mark.parametrize("unit", ["micrometer", "nanometer"])
def test_labels_of_a_czyx_image_drop_its_channels_and_take_its_scale(
    tmp_path: Path, ome: SimpleNamespace, unit: str
) -> None:
    rng = np.random.default_rng(7)
    image = _ome_zarr_image(
        ome,
        tmp_path / "image.zarr",
        rng.integers(0, 255, (2, 3, 24, 20)).astype(np.uint8),
        "czyx",
        {"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.25},
        dict.fromkeys("zyx", unit),
    )
    labels = np.zeros((3, 24, 20), np.uint32)
    labels[1, 4:9, 5:10] = 3
    volume = open_volume(image)
    sizes = tuple(volume.voxel_size[a] for a in "ZYX")

    write_ome_zarr_labels(image, labels, axes="ZYX", voxel_size=sizes, image_group=True)

    node = _label_node(ome, image)
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert {a.get("unit") for a in node.metadata["axes"]} == {unit}
    # The image's own scale (in its own unit), so that both line up in any viewer.
    assert node.metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": [2.0, 0.5, 0.25]}
    ]
    assert node.data[0].shape == labels.shape
    np.testing.assert_array_equal(np.asarray(node.data[0]), labels)


def test_predict_into_a_channel_ome_zarr_writes_spatial_labels_in_its_scale(
    model_store: Path, tmp_path: Path, ome: SimpleNamespace
) -> None:
    image = _ome_zarr_image(
        ome,
        tmp_path / "image.zarr",
        _pixels()[None],
        "cyx",
        {"c": 1.0, "y": 0.5, "x": 0.5},
        {"y": "micrometer", "x": "micrometer"},
    )
    predict(_config(model_store, image, None))
    node = _label_node(ome, image)
    assert node.metadata["axes"] == [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert node.metadata["coordinateTransformations"][0] == [{"type": "scale", "scale": [0.5, 0.5]}]
    assert node.data[0].shape == (40, 40)
