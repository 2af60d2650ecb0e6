"""predict --object-size: inputs resampled so that their objects have the training size."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.config import PredictConfig
from embedseg_cli.io.models import TrainedModel, read_model, write_compact
from embedseg_cli.method.model import BranchedERFNet
from embedseg_cli.predict import predict
from tests.conftest import disks

LOOSE = {"seed_threshold": 0.5, "foreground_threshold": 0.45, "min_object_size": 0}
SMALL = {"tile_size": (64,), "overlap": (16,), "block_size": (64,), "tta": False}


def _config(model: Path | str, image: Path, out: Path, **options: object) -> PredictConfig:
    return PredictConfig(
        input=image, model=str(model), out=out, device="cpu", **{**LOOSE, **SMALL, **options}
    )


def _median_diameter(labels: np.ndarray) -> float:
    sizes = np.bincount(labels.ravel())[1:]
    return float(np.median(np.sqrt(4 * sizes[sizes > 0] / np.pi)))


def _cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["-q", "predict", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    """The same kind of nuclei-like disks at two sizes: about 21 and 42 pixels across."""
    folder = tmp_path_factory.mktemp("nuclei")
    found = {}
    for name, shape, radius in (("fine", (192, 192), (9, 12)), ("coarse", (384, 384), (18, 24))):
        image, labels = disks(shape, 14, np.random.default_rng(21), radius=radius)
        tifffile.imwrite(folder / f"{name}.tif", image)
        found[name] = (folder / f"{name}.tif", labels)
    return found


def test_auto_estimates_the_object_size_and_returns_labels_at_the_input_shape(
    nuclei: dict[str, tuple[Path, np.ndarray]], tmp_path: Path
) -> None:
    # The built-in model learned diameters of 12.1 to 28.1 pixels (quartiles), median 20.6.
    sizes = {}
    for name, (image, truth) in nuclei.items():
        out = tmp_path / f"{name}.tif"
        report = predict(PredictConfig(input=image, out=out, tta=False, device="cpu"))
        size = report.object_sizes[name]
        assert size.mode == "auto"  # the default for a built-in model
        assert size.training_diameter == pytest.approx(20.56)
        assert size.diameter == pytest.approx(_median_diameter(truth), rel=0.2)
        sizes[name] = size
        labels = tifffile.imread(out)
        assert labels.shape == truth.shape
        assert abs(int(labels.max()) - int(truth.max())) <= 2
    # Within the training sizes: not resampled; larger: brought to the upper quartile.
    assert sizes["fine"].scale == 1.0
    coarse = sizes["coarse"]
    assert coarse.diameter is not None
    assert coarse.scale * coarse.diameter == pytest.approx(28.119, abs=0.01)


def test_a_given_object_size_resamples_by_its_ratio_to_the_sizes_the_model_learned(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    data = read_model(model_store).record.data
    assert data.median_diameter is not None
    assert data.diameter_quartiles is not None
    # Twice the upper quartile (the larger end of the sizes the model learned): halved.
    given = 2 * max(data.diameter_quartiles[1], 1.15 * data.median_diameter)
    plan = predict(_config(model_store, image_2d, tmp_path / "a.tif", dry_run=True)).plans[0]
    assert plan["object_size"]["mode"] == "off"  # the default for a trained model
    assert plan["shape"] == [150, 130]
    report = predict(
        _config(model_store, image_2d, tmp_path / "a.tif", object_size=given, dry_run=True)
    )
    (plan,) = report.plans
    assert plan["object_size"]["scale"] == pytest.approx(0.5)
    assert plan["shape"] == [75, 65]
    table = tmp_path / "t.csv"
    code, stdout, stderr = _cli(
        image_2d, "--model", model_store, "--out", tmp_path / "b.tif", "--object-size", given,
        "--table", table, "--json", "--device", "cpu", "--no-tta", "--seed-threshold", "0.5",
        "--foreground-threshold", "0.45", "--min-object-size", "0",
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["object_size"]["image"] == {
        "mode": "given",
        "scale": 0.5,
        "diameter": round(given, 2),
        "training_diameter": round(data.median_diameter, 2),
    }
    labels = tifffile.imread(tmp_path / "b.tif")
    assert labels.shape == (150, 130)
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == labels.max() > 0
    for row in rows:
        assert float(row["object_size_scale"]) == 0.5
        assert float(row["input_median_diameter"]) == pytest.approx(given, abs=0.01)
        # The seed, found on the resampled grid, is given where it is in the input.
        where = np.argwhere(labels == int(row["label"]))
        seed = np.array([float(row["seed_y"]), float(row["seed_x"])])
        assert np.all(where.min(axis=0) - 1 <= seed)
        assert np.all(seed <= where.max(axis=0) + 1)


def test_resampled_labels_do_not_depend_on_the_blocks(
    nuclei: dict[str, tuple[Path, np.ndarray]], tmp_path: Path
) -> None:
    image, truth = nuclei["coarse"]
    labels = []
    for block in (64, 1024):
        out = tmp_path / f"b{block}.tif"
        options = {"object_size": 42.0, "block_size": (block,), "tile_size": (64,)}
        predict(PredictConfig(input=image, out=out, tta=False, device="cpu", **options))
        labels.append(tifffile.imread(out))
    assert labels[0].shape == truth.shape
    assert abs(int(labels[0].max()) - int(truth.max())) <= 2
    np.testing.assert_array_equal(labels[0], labels[1])


def test_off_keeps_the_input_scale(nuclei: dict[str, tuple[Path, np.ndarray]]) -> None:
    image, _ = nuclei["coarse"]
    plan = predict(
        PredictConfig(input=image, out=image.with_name("o.tif"), object_size="off", dry_run=True)
    ).plans[0]
    assert plan["shape"] == [384, 384]
    assert plan["object_size"] == {
        "mode": "off",
        "scale": 1.0,
        "diameter": None,
        "training_diameter": None,
    }


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "big"])
def test_an_object_size_out_of_range_is_a_usage_error(
    value: str, image_2d: Path, tmp_path: Path
) -> None:
    code, stdout, stderr = _cli(
        image_2d, "--out", tmp_path / "l.tif", "--object-size", value, "--json"
    )
    assert code == 2
    assert "--object-size" in stderr
    assert json.loads(stdout)["exit_code"] == 2
    assert not (tmp_path / "l.tif").exists()


def test_an_object_size_larger_than_the_image_is_a_usage_error(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    code, _, stderr = _cli(
        image_2d, "--model", model_store, "--out", tmp_path / "l.tif", "--object-size", "500"
    )
    assert code == 2
    assert "--object-size 500 is larger than" in stderr
    assert "150 x 130" in stderr
    assert not (tmp_path / "l.tif").exists()


def test_an_image_without_objects_gets_empty_labels_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = tmp_path / "empty.tif"
    tifffile.imwrite(image, np.random.default_rng(4).normal(100, 1, (96, 96)).astype(np.uint16))
    with caplog.at_level(logging.WARNING):
        report = predict(
            PredictConfig(input=image, out=tmp_path / "l.tif", tta=False, device="cpu")
        )
    assert "found no objects in" in caplog.text
    assert report.object_sizes["empty"].scale == 1.0
    assert report.object_sizes["empty"].diameter is None
    labels = tifffile.imread(tmp_path / "l.tif")
    assert labels.shape == (96, 96)
    assert not labels.any()


def test_a_model_without_object_sizes_is_not_resampled(
    model_store: Path, image_2d: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained = read_model(model_store)
    data = {
        **trained.attrs["data"],
        "n_objects": 0,
        "mean_extent": [0.0, 0.0],
        "median_diameter": None,
        "diameter_quartiles": None,
    }
    model = write_compact(
        TrainedModel(trained.tensors, {**trained.attrs, "data": data}, "m"), tmp_path / "m.npz"
    )
    with caplog.at_level(logging.WARNING):
        report = predict(_config(model, image_2d, tmp_path / "l.tif", object_size="auto"))
    assert "records no object size" in caplog.text
    assert report.object_sizes["image"].scale == 1.0
    assert tifffile.imread(tmp_path / "l.tif").shape == (150, 130)


def test_a_model_prepared_before_the_median_diameter_uses_one_from_its_extents(
    model_store: Path, image_2d: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained = read_model(model_store)
    data = {k: v for k, v in trained.attrs["data"].items() if "diameter" not in k}
    model = write_compact(
        TrainedModel(trained.tensors, {**trained.attrs, "data": data}, "m"), tmp_path / "m.npz"
    )
    derived = float(np.sqrt(np.prod(data["mean_extent"])))
    with caplog.at_level(logging.INFO):
        report = predict(
            _config(model, image_2d, tmp_path / "l.tif", object_size=2 * derived, dry_run=True)
        )
    assert "derived from its mean object extent" in caplog.text
    assert report.object_sizes["image"].training_diameter == pytest.approx(derived, abs=0.01)
    # Without quartiles, objects are brought to within 15% of the median.
    assert report.object_sizes["image"].scale == pytest.approx(1.15 / 2, rel=1e-3)


def _volume_model(path: Path) -> Path:
    """A 3D model of untrained weights whose training objects were 7 to 9 pixels across
    (median 8), on voxels twice as deep as wide."""
    torch.manual_seed(0)
    tensors = {k: v.numpy() for k, v in BranchedERFNet(1, 3).state_dict().items()}
    attrs = {
        "format": 1,
        "epoch": 0,
        "model": {"in_channels": 1, "ndim": 3, "embedding_scale": 64.0, "spacing": [2, 1, 1]},
        "thresholds": {"foreground": 0.5, "seed": 0.9, "min_object_size": 4},
        "data": {
            "ndim": 3,
            "channels": 1,
            "voxel_size": [2.0, 1.0, 1.0],
            "anisotropy": 2.0,
            "n_objects": 10,
            "min_object_size": 4,
            "mean_object_size": 140.0,
            "max_object_size": 300,
            "mean_extent": [4.0, 8.0, 8.0],
            "std_extent": [1.0, 1.0, 1.0],
            "max_extent": [6, 10, 10],
            "median_diameter": 8.0,
            "diameter_quartiles": [7.0, 9.0],
            "foreground_weight": 5.0,
            "crop_size": [16, 32, 32],
            "centre": "medoid",
        },
    }
    return write_compact(TrainedModel(tensors, attrs, "volume"), path)


def test_a_volume_keeps_its_anisotropy(tmp_path: Path) -> None:
    model = _volume_model(tmp_path / "v.npz")
    image = tmp_path / "v.tif"
    tifffile.imwrite(image, np.random.default_rng(2).normal(100, 5, (16, 64, 48)).astype(np.uint16))
    # Objects of 18.4 pixels, twice the model's largest (8 + 15%): halved.
    config = _config(model, image, tmp_path / "l.tif", object_size=18.4, tile_size=(16, 32, 32))
    plan = predict(config.model_copy(update={"dry_run": True})).plans[0]
    assert plan["object_size"]["scale"] == pytest.approx(0.5)
    assert plan["shape"] == [8, 32, 24]  # every axis halved: z stays twice as deep
    predict(config)
    assert tifffile.imread(tmp_path / "l.tif").shape == (16, 64, 48)
