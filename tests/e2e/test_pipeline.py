"""prepare -> train -> predict -> evaluate on tiny synthetic images, through the CLI."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.io.store import ProjectStore

runner = CliRunner()


def _ok(*args: str | Path) -> str:
    result = runner.invoke(app, ["-q", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_prepare_train_predict_evaluate(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset(
        n_images=5, shape=(40, 40), n_objects=4, splits=("train", "train", "val", "train", "test")
    )
    store = tmp_path / "p.zarr"
    _ok("prepare", source, "--out", store, "--crop-size", "32")
    _ok(
        "train",
        store,
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--virtual-batch-multiplier",
        "1",
        "--run",
        "tiny",
        "--device",
        "cpu",
    )
    # The store's test images, into the store, then scored against their masks.
    summary = json.loads(_ok("predict", store, "--no-tta", "--json", "--device", "cpu"))
    assert summary["images"] == 1
    names = ProjectStore.open(store).prediction_names()
    assert names == [r.name for r in ProjectStore.open(store).images("test")]
    scores = json.loads(_ok("evaluate", store, "--json"))
    assert scores["n_images"] == 1
    # A folder of TIFFs into a folder of label TIFFs (uint16: the labels fit), with test-time
    # augmentation.
    _ok(
        "predict",
        source / "test" / "images",
        "--model",
        store,
        "--out",
        tmp_path / "labels",
        "--device",
        "cpu",
    )
    (written,) = sorted((tmp_path / "labels").iterdir())
    labels = tifffile.imread(written)
    assert labels.dtype == np.uint16
    assert labels.shape == (40, 40)
    # Existing outputs are kept unless --overwrite.
    again = runner.invoke(
        app,
        [
            "predict",
            str(source / "test" / "images"),
            "--model",
            str(store),
            "--out",
            str(tmp_path / "labels"),
            "--device",
            "cpu",
        ],
    )
    assert again.exit_code == 1
    assert "--overwrite" in again.stderr
    # A model for one channel refuses a two-channel image.
    two = tmp_path / "two.tif"
    tifffile.imwrite(two, np.zeros((40, 40, 2), np.uint16))
    wrong = runner.invoke(
        app,
        [
            "predict",
            str(two),
            "--model",
            str(store),
            "--out",
            str(tmp_path / "x.tif"),
            "--device",
            "cpu",
        ],
    )
    assert wrong.exit_code == 1
    assert "channel" in wrong.stderr
    none = runner.invoke(
        app,
        [
            "predict",
            str(two),
            "--model",
            str(tmp_path / "nope.zarr"),
            "--out",
            str(tmp_path / "x.tif"),
        ],
    )
    assert none.exit_code == 1
    assert "embedseg prepare" in none.stderr
