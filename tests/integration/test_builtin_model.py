"""The built-in nuclei model: listed by `embedseg models`, predict's default for 2D images."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.io.models import builtin_models, load_network, read_model
from tests.conftest import disks, shared_data


def test_the_builtin_model_is_listed_with_its_data_license_and_scores() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = [m for m in json.loads(result.stdout) if m["name"] == "dsb2018-fluo"]
    assert "dsb2018" in row["training_data"]
    assert "CC0" in row["license"]
    assert 0.5 < row["scores"]["ap50_tta"] <= 1.0
    assert len(row["scores"]["tta"]["per_image"]) == 9
    assert row["size_mb"] < 10


def test_the_builtin_model_is_compact_and_loads_without_pickle() -> None:
    (model,) = [m for m in builtin_models() if m.name == "dsb2018-fluo"]
    with np.load(model.path, allow_pickle=False) as archive:
        assert {archive[k].dtype for k in archive.files if k != "__attrs__"} <= {
            np.dtype(np.float16),
            np.dtype(np.int64),
        }
    trained = read_model("dsb2018-fluo")
    assert (trained.ndim, trained.channels) == (2, 1)
    load_network(trained, __import__("torch").device("cpu"))


def test_predict_without_a_model_segments_2d_nuclei(tmp_path: Path) -> None:
    image, _ = disks((96, 96), 8, np.random.default_rng(3), radius=(5, 8))
    tifffile.imwrite(tmp_path / "nuclei.tif", image)
    result = CliRunner().invoke(
        app,
        [
            "-q",
            "predict",
            str(tmp_path / "nuclei.tif"),
            "--out",
            str(tmp_path / "l.tif"),
            "--no-tta",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(tmp_path / "l.tif")
    assert labels.dtype == np.uint16  # a label TIFF is uint16 where the labels fit
    assert labels.shape == (96, 96)


def test_predict_without_a_model_on_a_volume_says_to_give_one(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((8, 32, 32), np.uint16))
    result = CliRunner().invoke(
        app, ["predict", str(tmp_path / "v.tif"), "--out", str(tmp_path / "l.tif")]
    )
    assert result.exit_code == 1
    assert "give --model" in result.stderr


@pytest.mark.data
def test_the_builtin_model_finds_the_nuclei_of_the_stardist_demo(tmp_path: Path) -> None:
    folder = shared_data("stardist-demo-2d")
    image = next(p for p in folder.rglob("*.tif") if "mask" not in str(p) and "label" not in str(p))
    result = CliRunner().invoke(
        app, ["-q", "predict", str(image), "--out", str(tmp_path / "l.tif"), "--no-tta"]
    )
    assert result.exit_code == 0, result.output
    assert tifffile.imread(tmp_path / "l.tif").max() > 60
