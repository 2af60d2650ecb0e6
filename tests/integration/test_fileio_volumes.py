"""Lazy volumes (TIFF, Zarr, OME-Zarr) and OME-Zarr label images, read back with ome-zarr."""

from __future__ import annotations

import json
import pickle
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from numpy.typing import NDArray

from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.ome_zarr import (
    NgffVersion,
    image_ngff_version,
    ome_zarr_label_path,
    write_ome_zarr_labels,
)
from embedseg_cli.io.volumes import open_volume


@pytest.fixture(scope="module")
def ome() -> SimpleNamespace:
    """The ome-zarr package's reader and writer (skips where it is not installed)."""
    with warnings.catch_warnings():
        # ome-zarr 0.17 warns at import about its own deprecated Scaler class.
        warnings.simplefilter("ignore", DeprecationWarning)
        io = pytest.importorskip("ome_zarr.io")
        reader = pytest.importorskip("ome_zarr.reader")
        writer = pytest.importorskip("ome_zarr.writer")
        formats = pytest.importorskip("ome_zarr.format")
    return SimpleNamespace(
        parse_url=io.parse_url,
        Reader=reader.Reader,
        Label=reader.Label,
        Multiscales=reader.Multiscales,
        write_image=writer.write_image,
        FormatV04=formats.FormatV04,
    )


def _labels(shape: tuple[int, ...], rng: np.random.Generator) -> NDArray[np.uint32]:
    """Blocky labels (0 = background) with values past 2**16, so uint32 matters."""
    coarse = rng.integers(0, 70_000, size=tuple(max(1, n // 16) for n in shape))
    labels = coarse.repeat(16, axis=-1).repeat(16, axis=-2)
    labels = labels[tuple(slice(0, n) for n in shape)]
    labels = np.pad(labels, [(0, n - m) for n, m in zip(shape, labels.shape, strict=True)])
    labels[labels < 20_000] = 0
    return labels.astype(np.uint32)


def _attrs(group: Path) -> dict[str, Any]:
    """A group's OME metadata, read by hand (``ome`` in 0.5, the attributes in 0.4)."""
    if (group / "zarr.json").is_file():
        meta = json.loads((group / "zarr.json").read_text())
        assert meta["zarr_format"] == 3
        assert meta["attributes"]["ome"]["version"] == "0.5"
        return dict(meta["attributes"]["ome"])
    assert (group / ".zgroup").is_file()
    return dict(json.loads((group / ".zattrs").read_text()))


def _label_node(ome: SimpleNamespace, path: Path) -> Any:
    nodes = [n for n in ome.Reader(ome.parse_url(path))() if n.load(ome.Label) is not None]
    assert len(nodes) == 1
    return nodes[0]


# open_volume --------------------------------------------------------------------------------


def test_open_2d_tiff(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 4000, (40, 56)).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, data, resolution=(4e4, 4e4), resolutionunit="CENTIMETER")

    volume = open_volume(path)

    assert isinstance(volume.array, da.Array)
    assert volume.axes == "YX"
    assert volume.voxel_size == pytest.approx({"Y": 0.25, "X": 0.25})
    assert volume.name == "cells"
    assert volume.array.dtype == np.uint16
    np.testing.assert_array_equal(volume.array.compute(), data)


def test_open_3d_imagej_tiff_with_spacing(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 255, (6, 32, 40)).astype(np.uint8)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"},
    )

    volume = open_volume(path)

    assert volume.axes == "ZYX"
    assert volume.voxel_size == pytest.approx({"Z": 1.5, "Y": 0.5, "X": 0.5})
    assert volume.name == "stack"
    assert volume.array.shape == data.shape
    np.testing.assert_array_equal(volume.array.compute(), data)


def test_tiff_pixels_are_read_when_computed_and_the_array_pickles(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 24, 24), np.uint16))
    volume = open_volume(path)
    assert volume.axes == "ZYX"  # tifffile's unnamed "Q" axis of a plain 3-D stack

    # Nothing was read at open: new pixels written since are what the array computes.
    data = rng.integers(0, 60_000, (5, 24, 24)).astype(np.uint16)
    tifffile.imwrite(path, data)
    np.testing.assert_array_equal(volume.array.compute(), data)
    # dask.distributed ships the graph to workers: it must pickle (the open file does not).
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(volume.array)).compute(), data)


def test_open_rgb_tiff_names_samples_c(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tiff"
    tifffile.imwrite(path, np.zeros((16, 20, 3), np.uint8), photometric="rgb")
    volume = open_volume(path)
    assert volume.axes == "YXC"
    assert volume.array.shape == (16, 20, 3)


def test_open_zarr_v3_array_keeps_its_chunks(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 1000, (4, 32, 48)).astype(np.uint16)
    path = tmp_path / "volume.zarr"
    array = zarr.create_array(path, shape=data.shape, chunks=(2, 16, 16), dtype=data.dtype)
    array[...] = data

    volume = open_volume(path)
    with dask.config.set({"array.chunk-size": "4KiB"}):
        small = open_volume(path)

    assert isinstance(volume.array, da.Array)
    assert volume.axes == "ZYX"
    assert volume.voxel_size == {}
    assert volume.name == "volume"
    # Source chunks are joined up to dask's array.chunk-size, never split.
    assert volume.array.chunks == ((4,), (32,), (48,))
    assert small.array.chunksize == (2, 16, 16)
    # Lazy: a change made after opening is what the array computes.
    array[0] = 7
    data[0] = 7
    np.testing.assert_array_equal(volume.array.compute(), data)


def test_open_zarr_array_with_dimension_names(tmp_path: Path) -> None:
    path = tmp_path / "channels.zarr"
    array = zarr.create_array(
        path, shape=(2, 8, 9), chunks=(1, 8, 9), dtype="float32", dimension_names=["c", "y", "x"]
    )
    array[...] = 1.5
    volume = open_volume(path)
    assert volume.axes == "CYX"
    np.testing.assert_array_equal(volume.array.compute(), np.full((2, 8, 9), 1.5, np.float32))


def test_open_ome_zarr_05_image(
    tmp_path: Path, rng: np.random.Generator, ome: SimpleNamespace
) -> None:
    data = rng.integers(0, 5000, (1, 2, 6, 64, 80)).astype(np.uint16)
    path = tmp_path / "image.ome.zarr"
    ome.write_image(
        data,
        zarr.open_group(path, mode="w"),
        axes=[
            {"name": "t", "type": "time"},
            {"name": "c", "type": "channel"},
            *({"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"),
        ],
        scale={"z": 2.0, "y": 0.25, "x": 0.25},
        scale_factors=[2],
        storage_options={"chunks": (1, 1, 3, 32, 32)},
    )

    volume = open_volume(path)

    assert isinstance(volume.array, da.Array)
    assert volume.axes == "CZYX"  # the t axis of size 1 is dropped, c is kept
    assert volume.voxel_size == pytest.approx({"Z": 2.0, "Y": 0.25, "X": 0.25})
    assert volume.name == "image"
    np.testing.assert_array_equal(volume.array.compute(), data[0])

    # One level on its own: the image's metadata still give its axes and voxel size.
    level = _attrs(path)["multiscales"][0]["datasets"][1]["path"]
    coarse = open_volume(path / level)
    assert coarse.axes == "TCZYX"
    assert coarse.voxel_size == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.5})
    assert coarse.name == "image"


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_open_volume_reads_labels_written_here(
    tmp_path: Path, rng: np.random.Generator, version: NgffVersion
) -> None:
    labels = _labels((3, 40, 48), rng)
    path = tmp_path / "labels.zarr"
    write_ome_zarr_labels(
        path, labels, axes="ZYX", voxel_size=(3.0, 0.5, 0.5), ngff_version=version
    )

    volume = open_volume(path)

    assert volume.axes == "ZYX"
    assert volume.voxel_size == pytest.approx({"Z": 3.0, "Y": 0.5, "X": 0.5})
    assert volume.array.dtype == np.uint32
    np.testing.assert_array_equal(volume.array.compute(), labels)


def test_open_bioformats2raw_collection(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "converted.zarr"
    labels = _labels((32, 32), rng)
    write_ome_zarr_labels(path / "0", labels, axes="YX", voxel_size=(0.2, 0.2))
    root = zarr.open_group(path, mode="a", zarr_format=3)
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}

    volume = open_volume(path)

    assert volume.name == "converted"
    assert volume.voxel_size == pytest.approx({"Y": 0.2, "X": 0.2})
    np.testing.assert_array_equal(volume.array.compute(), labels)


def test_open_volume_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tif"
    with pytest.raises(InputError, match=r"missing\.tif does not exist"):
        open_volume(missing)

    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"image\.png is not a TIFF file"):
        open_volume(png)

    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match=r"broken\.tif cannot be read as a TIFF"):
        open_volume(broken)

    folder = tmp_path / "tiffs"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match=r"tiffs is a folder but not a Zarr array"):
        open_volume(folder)

    group = zarr.open_group(tmp_path / "group.zarr", mode="w")
    group.create_array("raw", shape=(4, 4), dtype="uint8")
    with pytest.raises(
        InputError, match=r"group\.zarr is a Zarr group but not an OME-Zarr image.*raw"
    ):
        open_volume(tmp_path / "group.zarr")

    zarr.create_array(tmp_path / "4d.zarr", shape=(2, 2, 4, 4), dtype="uint8")
    with pytest.raises(InputError, match=r"4d\.zarr is a 4-D Zarr array without axis names"):
        open_volume(tmp_path / "4d.zarr")


# write_ome_zarr_labels ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_write_2d_labels_standalone(
    tmp_path: Path, rng: np.random.Generator, ome: SimpleNamespace, version: NgffVersion
) -> None:
    labels = _labels((600, 600), rng)
    path = tmp_path / "out" / "labels.ome.zarr"

    write_ome_zarr_labels(path, labels, axes="YX", voxel_size=(0.5, 0.5), ngff_version=version)

    node = _label_node(ome, path)
    assert len(node.data) == 3  # 600 -> 300 -> 150 (< 256)
    np.testing.assert_array_equal(node.data[0].compute(), labels)
    np.testing.assert_array_equal(node.data[1].compute(), labels[::2, ::2])
    assert all(level.dtype == np.uint32 for level in node.data)
    assert [level.shape for level in node.data] == [(600, 600), (300, 300), (150, 150)]

    attrs = _attrs(path)
    assert "image-label" in attrs
    assert "source" not in attrs["image-label"]  # a standalone label image has no image
    multiscale = attrs["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["y", "x"]
    assert {a["type"] for a in multiscale["axes"]} == {"space"}
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]
    if version == "0.5":
        array_meta = json.loads((path / "0" / "zarr.json").read_text())
        assert array_meta["dimension_names"] == ["y", "x"]
        assert array_meta["data_type"] == "uint32"
    else:
        assert multiscale["version"] == "0.4"
        assert attrs["image-label"]["version"] == "0.4"
        array_meta = json.loads((path / "0" / ".zarray").read_text())
        assert array_meta["dimension_separator"] == "/"
        assert array_meta["zarr_format"] == 2
    assert not list(path.parent.glob(".*.incomplete-*"))  # no staging folder left behind


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_write_3d_labels_downsamples_z_once_it_is_not_coarser(
    tmp_path: Path, rng: np.random.Generator, ome: SimpleNamespace, version: NgffVersion
) -> None:
    labels = _labels((6, 600, 520), rng)
    chunked = da.from_array(labels, chunks=(3, 200, 260))
    path = tmp_path / "labels.zarr"

    write_ome_zarr_labels(
        path,
        chunked,
        axes="ZYX",
        voxel_size=(2.0, 0.5, 0.5),
        ngff_version=version,
    )

    node = _label_node(ome, path)
    # z (2.0) is more than twice y (0.5) at level 0, not at level 1 (y = 1.0).
    assert [level.shape for level in node.data] == [(6, 600, 520), (6, 300, 260), (3, 150, 130)]
    np.testing.assert_array_equal(node.data[0].compute(), labels)
    np.testing.assert_array_equal(node.data[2].compute(), labels[::2, ::4, ::4])
    multiscale = _attrs(path)["multiscales"][0]
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [4.0, 2.0, 2.0]]
    assert {a["unit"] for a in multiscale["axes"]} == {"micrometer"}


def test_write_labels_levels_and_lazy_input_computed_once(tmp_path: Path) -> None:
    calls = 0
    lock = threading.Lock()

    def block(x: NDArray[np.uint32]) -> NDArray[np.uint32]:
        nonlocal calls
        with lock:
            calls += 1
        return x + 1

    lazy = da.zeros((64, 64), dtype=np.uint32, chunks=32).map_blocks(
        block, dtype=np.uint32, meta=np.empty((0, 0), np.uint32)
    )
    path = tmp_path / "lazy.zarr"

    write_ome_zarr_labels(path, lazy, axes="YX", voxel_size=(1.0, 1.0), levels=4)

    assert calls == 4  # each input block once, however many levels are written
    levels = [zarr.open_array(path / str(k), mode="r") for k in range(4)]
    assert [a.shape for a in levels] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert all((np.asarray(a[...]) == 1).all() for a in levels)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_write_labels_into_image(
    tmp_path: Path, rng: np.random.Generator, ome: SimpleNamespace, version: NgffVersion, ndim: int
) -> None:
    shape = (600, 560) if ndim == 2 else (4, 600, 560)
    axes = "yx" if ndim == 2 else "zyx"
    image = tmp_path / "image.zarr"
    fmt = ome.FormatV04() if version == "0.4" else None
    group = zarr.open_group(image, mode="w", zarr_format=2 if version == "0.4" else 3)
    ome.write_image(
        rng.integers(0, 255, shape).astype(np.uint8),
        group,
        axes=axes,
        fmt=fmt,
        scale=dict.fromkeys(axes, 0.5),
        scale_factors=[2, 4, 8],
    )
    assert image_ngff_version(image) == version
    labels = _labels(shape, rng)

    write_ome_zarr_labels(
        image,
        labels,
        axes=axes.upper(),
        voxel_size=(0.5,) * ndim,
        ngff_version=version,
        image_group=True,
    )
    write_ome_zarr_labels(
        image,
        labels,
        axes=axes.upper(),
        voxel_size=(0.5,) * ndim,
        ngff_version=version,
        image_group=True,
        name="second",
    )
    # Writing again replaces the label image and does not list it twice.
    write_ome_zarr_labels(
        image,
        labels + 1,
        axes=axes.upper(),
        voxel_size=(0.5,) * ndim,
        ngff_version=version,
        image_group=True,
    )

    assert _attrs(image / "labels")["labels"] == ["embedseg", "second"]
    label_attrs = _attrs(ome_zarr_label_path(image))
    assert label_attrs["image-label"]["source"] == {"image": "../../"}

    nodes = list(ome.Reader(ome.parse_url(image))())
    image_node, label_nodes = nodes[0], [n for n in nodes if n.load(ome.Label) is not None]
    assert [n.metadata["name"] for n in label_nodes] == ["embedseg", "second"]
    embedseg = label_nodes[0]
    # The label image has the image's levels (OME-Zarr 0.5 requires as many).
    assert len(embedseg.data) == len(image_node.data) == 4
    assert [a.shape for a in embedseg.data] == [a.shape for a in image_node.data]
    np.testing.assert_array_equal(embedseg.data[0].compute(), labels + 1)
    assert embedseg.data[0].dtype == np.uint32
    assert not list((image / "labels").glob(".*.incomplete-*"))
    assert not list((image / "labels").glob(".*.old-*"))


def test_write_labels_errors(
    tmp_path: Path, rng: np.random.Generator, ome: SimpleNamespace
) -> None:
    labels = _labels((32, 32), rng)

    with pytest.raises(InputError, match=r"nothing\.zarr does not exist"):
        write_ome_zarr_labels(
            tmp_path / "nothing.zarr", labels, axes="YX", voxel_size=(1, 1), image_group=True
        )

    not_image = tmp_path / "plain.zarr"
    zarr.open_group(not_image, mode="w")
    with pytest.raises(InputError, match=r"plain\.zarr is not an OME-Zarr image"):
        write_ome_zarr_labels(not_image, labels, axes="YX", voxel_size=(1, 1), image_group=True)

    image = tmp_path / "image.zarr"
    ome.write_image(
        np.zeros((32, 32), np.uint8),
        zarr.open_group(image, mode="w", zarr_format=2),
        axes="yx",
        fmt=ome.FormatV04(),
    )
    with pytest.raises(
        InputError, match=r"image\.zarr is an OME-Zarr 0\.4 image.*--ngff-version 0\.4"
    ):
        write_ome_zarr_labels(image, labels, axes="YX", voxel_size=(1, 1), image_group=True)
    with pytest.raises(InputError, match=r"do not fit the image"):
        write_ome_zarr_labels(
            image, labels[:16], axes="YX", voxel_size=(1, 1), image_group=True, ngff_version="0.4"
        )

    existing = tmp_path / "results"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(
        OutputExistsError, match=r"results exists and is not an OME-Zarr label image"
    ):
        write_ome_zarr_labels(existing, labels, axes="YX", voxel_size=(1, 1))
    assert (existing / "keep.txt").read_text() == "mine"

    with pytest.raises(ValueError, match="integer dtype"):
        write_ome_zarr_labels(
            tmp_path / "f.zarr", labels.astype(float), axes="YX", voxel_size=(1, 1)
        )
    with pytest.raises(ValueError, match="in that order"):
        write_ome_zarr_labels(tmp_path / "f.zarr", labels, axes="XY", voxel_size=(1, 1))
    with pytest.raises(ValueError, match="name 3 axes"):
        write_ome_zarr_labels(tmp_path / "f.zarr", labels, axes="ZYX", voxel_size=(1, 1, 1))
    with pytest.raises(ValueError, match="one size per spatial axis"):
        write_ome_zarr_labels(tmp_path / "f.zarr", labels, axes="YX", voxel_size=(1, 1, 1))
    assert not (tmp_path / "f.zarr").exists()
