"""``export``: models that predict the same labels as the store, labels other tools read."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
import zarr

from embedseg_cli.config import (
    ExportLabelsConfig,
    ExportModelConfig,
    PredictConfig,
    PrepareConfig,
    TrainConfig,
)
from embedseg_cli.export import CITATION, export_labels, export_model
from embedseg_cli.io.models import load_network, read_model
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.io.tiff import read_tiff
from embedseg_cli.method.clustering import find_instances
from embedseg_cli.method.inference import ClusterThresholds, segment
from embedseg_cli.method.instances import EmbedSegInstances, cluster_instances
from embedseg_cli.predict import predict
from embedseg_cli.prepare import prepare
from embedseg_cli.train import train
from tests.conftest import disks, write_pair

# An untrained network's seeds hover around 0.5: a checkpoint with these thresholds finds
# many small objects, so that labels (and the package's test output) are not empty.
LOOSE = {"foreground": 0.45, "seed": 0.5, "min_object_size": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained store with a second run, ``loose``, whose thresholds find objects."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(7)
    for i, split in enumerate(("train", "val", "test")):
        image, mask = disks((40, 48), 4, rng)
        write_pair(root / "src" / split, f"i{i}", image, mask)
    path = root / "p.zarr"
    prepare(PrepareConfig(source=root / "src", out=path, crop_size=(32,)))
    train(
        TrainConfig(
            store=path,
            epochs=1,
            steps_per_epoch=1,
            virtual_batch_multiplier=1,
            run="m",
            device="cpu",
        )
    )
    project = ProjectStore.open(path)
    tensors, attrs = project.read_checkpoint("m", "best")
    attrs = {k: v for k, v in attrs.items() if k not in ("complete", "time")}
    project.write_checkpoint(
        "loose", "best", tensors, {**attrs, "run": "loose", "thresholds": LOOSE}
    )
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "image.tif"
    pixels, _ = disks((56, 64), 8, np.random.default_rng(8))
    tifffile.imwrite(path, pixels)
    return path


def _predict(model: Path, image: Path, out: Path) -> np.ndarray:
    predict(
        PredictConfig(
            input=image,
            model=str(model),
            run="loose",
            out=out,
            tta=False,
            device="cpu",
            foreground_threshold=LOOSE["foreground"],
            seed_threshold=LOOSE["seed"],
            min_object_size=0,
        )
    )
    return np.asarray(tifffile.imread(out))


@pytest.fixture(scope="module")
def store_labels(store: Path, image: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The labels of ``image`` predicted with the store's ``loose`` checkpoint."""
    labels = _predict(store, image, tmp_path_factory.mktemp("labels") / "store.tif")
    assert labels.max() >= 5, "the tests need objects to be meaningful"
    return labels


def _bioimageio_unusable() -> str | None:
    """Why bioimage.io packages cannot be built and tested here, or None."""

    def numbers(package: str) -> tuple[int, ...]:
        version = importlib.metadata.version(package)
        return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())

    try:
        spec, _ = numbers("bioimageio.spec"), numbers("bioimageio.core")
    except importlib.metadata.PackageNotFoundError:
        return "bioimageio.core is not installed (the export dependency group)"
    if spec < (0, 5, 14) and numbers("pydantic") >= (2, 14):
        return "bioimageio.spec < 0.5.14 fails with pydantic >= 2.14: install the export group"
    return None


BIOIMAGEIO = pytest.mark.skipif(
    _bioimageio_unusable() is not None, reason=str(_bioimageio_unusable())
)


# Models ----------------------------------------------------------------------------------


def test_torchscript_model_predicts_the_labels_of_the_store(
    store: Path, image: Path, store_labels: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "model.pt"
    report = export_model(
        ExportModelConfig(model=str(store), run="loose", format="torchscript", out=out)
    )

    assert report.out == str(out)
    assert not list(tmp_path.glob(".*incomplete*"))
    model = read_model(out)
    expected = read_model(store, run="loose")
    assert model.attrs == expected.attrs
    for name, value in expected.tensors.items():
        np.testing.assert_array_equal(model.tensors[name].reshape(value.shape), value)
    from_file = _predict(out, image, tmp_path / "file.tif")
    np.testing.assert_array_equal(from_file, store_labels)


def test_onnx_model_gives_the_network_outputs_of_torch(store: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnx and onnxruntime are not installed (the export dependency group)")
    import onnx
    import onnxruntime

    out = tmp_path / "model.onnx"
    export_model(ExportModelConfig(model=str(store), format="onnx", out=out))

    proto = onnx.load(str(out))
    metadata = {p.key: p.value for p in proto.metadata_props}
    trained = read_model(store)
    assert json.loads(metadata["embedseg"]) == trained.attrs
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(3).random((2, 1, 40, 56), dtype=np.float32)
    (outputs,) = session.run(None, {"image": batch})
    with torch.no_grad():
        reference = load_network(trained, torch.device("cpu"))(torch.from_numpy(batch)).numpy()
    assert outputs.shape == (2, 5, 40, 56)
    np.testing.assert_allclose(outputs, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_packages_clustering_equals_embedseg_clustering(ndim: int) -> None:
    rng = np.random.default_rng(ndim)
    shape = (24, 32) if ndim == 2 else (8, 16, 24)
    # Raw outputs with a smooth seed landscape and offsets, so that instances of many sizes
    # form, some proposals are rejected and some pixels are claimed twice.
    raw = torch.from_numpy(rng.normal(0.0, 0.6, (2 * ndim + 1, *shape)).astype(np.float32))
    raw[ndim : 2 * ndim] = raw[ndim : 2 * ndim] * 0.05 + 0.55
    raw[2 * ndim] = raw[2 * ndim] * 4
    spacing = (2.0, 1.0, 1.0)[-ndim:]
    thresholds = ClusterThresholds(foreground=0.4, seed=0.7, min_object_size=2)
    result = segment(
        raw, ndim, origin=(0,) * ndim, spacing=spacing, scale=64.0, thresholds=thresholds
    )
    assert len(result.seeds) >= 5, "the test needs several instances"
    assert result.rejected >= 1, "the test needs rejected proposals"
    order = np.argsort(np.ravel_multi_index(tuple(result.seeds.T), shape))
    renumber = np.zeros(len(order) + 1, np.uint32)
    renumber[order + 1] = np.arange(1, len(order) + 1)
    expected = renumber[result.labels]

    network = EmbedSegInstances(1, ndim, list(spacing), 64.0, 0.4, 0.7, 2).eval()
    network.network = _Fixed(raw)  # type: ignore[assignment]
    with torch.no_grad():
        labels = network(torch.zeros(2, 1, *shape))
    assert labels.shape == (2, 1, *shape)
    np.testing.assert_array_equal(labels[0, 0].numpy(), expected)
    np.testing.assert_array_equal(labels[1, 0].numpy(), expected)


class _Fixed(torch.nn.Module):
    """Stands in for the network: the same raw outputs for every batch item."""

    def __init__(self, raw: torch.Tensor) -> None:
        super().__init__()
        self.raw = raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw.expand(x.shape[0], *self.raw.shape)


def test_cluster_instances_on_hand_made_embeddings() -> None:
    seed = torch.tensor([[0.0, 0.95, 0.7, 0.7, 0.0, 0.7, 0.92, 0.6]])
    embedding = torch.zeros(2, 1, 8)
    embedding[1] = torch.tensor([0.0, 0.1, 0.1, 0.1, 0.0, 0.5, 0.5, 0.5])
    bandwidth = torch.full((2, 1, 8), 1000.0)
    reference = find_instances(embedding.numpy(), bandwidth.numpy(), seed.numpy())

    labels = cluster_instances(embedding, bandwidth, seed, 0.5, 0.9, 0, -np.log(0.5))

    assert labels.tolist() == [[0, 1, 1, 1, 0, 2, 2, 2]] == reference.labels.tolist()


@BIOIMAGEIO
def test_bioimageio_package_passes_bioimageio_core_and_predicts_like_the_store(
    store: Path, image: Path, store_labels: np.ndarray, tmp_path: Path
) -> None:
    from bioimageio.core import test_model

    out = tmp_path / "model.zip"
    export_model(
        ExportModelConfig(
            model=str(store),
            run="loose",
            format="bioimageio",
            out=out,
            authors=("Ada Lovelace", "Alan Turing"),
        )
    )

    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        test_output = np.load(archive.open("test_output.npy"))
    assert {"weights.pt", "weights_torchscript.pt", "model.py", "cover.png", "README.md"} <= names
    assert str(rdf["format_version"]).startswith("0.5.")
    assert rdf["cite"][0]["url"] == CITATION["url"]
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Alan Turing"]
    assert rdf["config"]["embedseg"] == read_model(store, run="loose").attrs
    assert rdf["inputs"][0]["preprocessing"][1]["kwargs"]["max_percentile"] == 99.8
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    assert test_output.dtype == np.uint32
    assert test_output.max() >= 5

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bioimageio's own deprecations and torch's
        summary = test_model(out)
    failures = [
        f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status == "failed"
    ]
    assert summary.status == "passed", failures
    tested = {d.name for d in summary.details}
    assert "Reproduce test outputs from test inputs (pytorch_state_dict)" in tested
    assert "Reproduce test outputs from test inputs (torchscript)" in tested

    from_package = _predict(out, image, tmp_path / "package.tif")
    np.testing.assert_array_equal(from_package, store_labels)


@BIOIMAGEIO
def test_bioimageio_export_refuses_a_model_that_finds_nothing(store: Path, tmp_path: Path) -> None:
    from embedseg_cli.errors import InputError

    out = tmp_path / "model.zip"
    # The run "m" keeps the default thresholds: an untrained network finds no seed above 0.9.
    with pytest.raises(InputError, match="finds no objects in the package's test image"):
        export_model(ExportModelConfig(model=str(store), run="m", format="bioimageio", out=out))
    assert not out.exists()
    assert not list(tmp_path.glob(".*"))


# Labels ------------------------------------------------------------------------------------


def _labels_2d() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((12, 16), np.uint32)
    labels[1:4, 2:6] = 3  # 12 pixels
    labels[6:11, 10:12] = 7  # 10 pixels
    image = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
    return labels, image


def test_csv_has_one_row_per_object_with_size_centroid_box_and_intensity(tmp_path: Path) -> None:
    labels, pixels = _labels_2d()
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    tifffile.imwrite(tmp_path / "image.tif", pixels)
    out = tmp_path / "objects.csv"

    report = export_labels(
        ExportLabelsConfig(
            labels=tmp_path / "labels.tif", format="csv", out=out, image=tmp_path / "image.tif"
        )
    )

    assert report.objects == 2
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == ["3", "7"]
    first = rows[0]
    assert first["image"] == "labels"
    assert int(first["voxels"]) == 12
    assert float(first["centroid_y"]) == pytest.approx(2.0)
    assert float(first["centroid_x"]) == pytest.approx(3.5)
    assert (first["bbox_start_y"], first["bbox_start_x"]) == ("1", "2")
    assert (first["bbox_stop_y"], first["bbox_stop_x"]) == ("4", "6")
    assert float(first["mean_intensity"]) == pytest.approx(pixels[labels == 3].mean())
    assert float(rows[1]["mean_intensity"]) == pytest.approx(pixels[labels == 7].mean())


def test_tiff_is_uint16_with_imagej_voxel_size_where_labels_fit(tmp_path: Path) -> None:
    labels = np.zeros((4, 10, 12), np.uint32)
    labels[1:3, 2:5, 3:7] = 9
    source = tmp_path / "labels.tif"
    tifffile.imwrite(
        source,
        labels,
        photometric="minisblack",
        resolution=(1e4 / 0.5, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    out = tmp_path / "out.tif"

    export_labels(ExportLabelsConfig(labels=source, format="tiff", out=out))

    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata is not None
        assert tif.imagej_metadata["unit"] == "micron"
        assert "spacing" not in tif.imagej_metadata  # the source gives no z spacing
    written = read_tiff(out)
    assert written.data.dtype == np.uint16
    np.testing.assert_array_equal(written.data, labels)
    assert written.voxel_size == pytest.approx({"Y": 0.25, "X": 0.5})


def test_tiff_is_uint32_with_the_voxel_size_where_labels_do_not_fit(tmp_path: Path) -> None:
    labels = np.zeros((10, 12), np.uint32)
    labels[2:5, 3:7] = 70_000
    source = tmp_path / "big.tif"
    tifffile.imwrite(
        source, labels, resolution=(1e4 / 0.25, 1e4 / 0.5), resolutionunit="CENTIMETER"
    )
    out = tmp_path / "out.tif"

    export_labels(ExportLabelsConfig(labels=source, format="tiff", out=out))

    written = read_tiff(out)
    assert written.data.dtype == np.uint32
    np.testing.assert_array_equal(written.data, labels)
    assert written.voxel_size["X"] == pytest.approx(0.25)
    assert written.voxel_size["Y"] == pytest.approx(0.5)


def _read_with_ome_zarr(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ome-zarr's own, at import
        io = pytest.importorskip("ome_zarr.io")
        reader = pytest.importorskip("ome_zarr.reader")
    nodes = [n for n in reader.Reader(io.parse_url(path))() if n.load(reader.Label) is not None]
    assert len(nodes) == 1, "ome-zarr sees the output as one label image"
    return nodes[0]


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_labels_open_as_labels_with_ome_zarr(tmp_path: Path, version: str) -> None:
    labels = np.zeros((300, 280), np.uint32)
    labels[10:60, 20:90] = 4
    labels[200:290, 100:150] = 70_000
    source = tmp_path / "labels.zarr"
    zarr.create_array(source, data=labels, dimension_names=["y", "x"])
    out = tmp_path / "labels.ome.zarr"

    export_labels(
        ExportLabelsConfig(labels=source, format="ome-zarr", out=out, ngff_version=version)
    )

    node = _read_with_ome_zarr(out)
    np.testing.assert_array_equal(np.asarray(node.data[0]), labels)
    assert len(node.data) == 2  # 300 -> 150: a pyramid down to under 256 pixels
    assert (out / ("zarr.json" if version == "0.5" else ".zattrs")).is_file()


def test_preview_of_a_volume_shows_the_middle_slice_and_the_projection(tmp_path: Path) -> None:
    labels = np.zeros((6, 20, 24), np.uint32)
    labels[2:5, 4:12, 5:15] = 1
    pixels = np.random.default_rng(0).random((6, 20, 24)).astype(np.float32)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    tifffile.imwrite(tmp_path / "image.tif", pixels)
    out = tmp_path / "preview.png"

    export_labels(
        ExportLabelsConfig(
            labels=tmp_path / "labels.tif", format="preview", out=out, image=tmp_path / "image.tif"
        )
    )

    from PIL import Image

    with Image.open(out) as picture:
        assert picture.size == (2 * 24 + 8, 20)
        assert picture.mode == "RGB"


def test_a_stores_predictions_become_a_folder_of_files(store: Path, tmp_path: Path) -> None:
    project = ProjectStore.open(store)
    names = [r.name for r in project.images()][:2]
    for i, name in enumerate(names):
        labels = np.zeros(project.image(name).shape[:2], np.uint32)
        labels[3:9, 4:10] = i + 1
        project.write_prediction(name, labels)
    out = tmp_path / "previews"

    report = export_labels(ExportLabelsConfig(labels=store, format="preview", out=out))

    assert report.images == len(project.prediction_names())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.png" for n in project.prediction_names()
    )


def test_overwrite_replaces_an_output_and_leaves_no_staging(tmp_path: Path) -> None:
    labels, _ = _labels_2d()
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    out = tmp_path / "objects.csv"
    out.write_text("old\n")

    export_labels(
        ExportLabelsConfig(labels=tmp_path / "labels.tif", format="csv", out=out, overwrite=True)
    )

    assert out.read_text().startswith("image,label,voxels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "objects.csv"]
