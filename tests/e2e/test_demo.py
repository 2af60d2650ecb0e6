"""``embedseg demo``: the whole chain on synthetic cells, with a tiny schedule (and the real one)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from embedseg_cli import demo as demo_module
from embedseg_cli.cli import app
from embedseg_cli.config import DemoConfig
from embedseg_cli.demo import DEMO_MARKER, demo
from embedseg_cli.errors import OutputExistsError
from embedseg_cli.io.store import ProjectStore

runner = CliRunner()


def _tiny(out: Path, *, overwrite: bool = False) -> DemoConfig:
    """The demo's chain in seconds: two small training images, two batches of training."""
    return DemoConfig(
        out=out,
        epochs=1,
        steps_per_epoch=2,
        batch_size=2,
        images=(2, 1, 1),
        image_shape=(64, 64),
        device="cpu",
        tta=False,
        overwrite=overwrite,
    )


def test_the_demo_runs_the_whole_chain(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    report = demo(_tiny(out))

    assert (out / DEMO_MARKER).is_file()
    store = ProjectStore.open(report.store)
    assert [r.name for r in store.images("test")] == ["test00"]
    assert len(store.images("train")) == 2
    assert len(store.images("val")) == 1
    labels = tifffile.imread(report.labels / "test00.tif")
    assert labels.dtype == np.uint16  # label TIFFs are uint16 where the labels fit
    assert labels.shape == (64, 64)
    with Image.open(report.preview) as picture:
        assert picture.size == (512, 512)  # 64 x 64, each pixel drawn 8 times
        assert picture.mode == "RGB"
    scores = report.evaluation.scores
    assert scores.n_images == 1
    assert 0.5 in scores.thresholds
    for stats in (*scores.per_image, *scores.pooled):
        assert 0.0 <= stats.ap_dsb <= 1.0
    assert 0.0 <= report.ap(0.5) <= 1.0
    assert set(report.seconds) == {
        "data",
        "prepare",
        "train",
        "predict",
        "evaluate",
        "preview",
        "total",
    }
    summary = report.to_dict()
    assert summary["evaluation"]["n_images"] == 1
    assert summary["store"] == str(out / "project.zarr")


def test_the_command_prints_the_scores_and_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = dataclasses.replace(
        demo_module.default_schedule(2),
        images=(2, 1, 1),
        image_shape=(64, 64),
        epochs=1,
        steps_per_epoch=2,
        batch_size=2,
    )
    monkeypatch.setitem(demo_module._SCHEDULES, 2, tiny)
    out = tmp_path / "demo"
    out.mkdir()
    (out / DEMO_MARKER).write_text("")  # an earlier demo, with a file of the user's in it
    (out / "notes.txt").write_text("mine")

    refused = runner.invoke(app, ["demo", "--out", str(out), "--device", "cpu"])
    assert refused.exit_code == 1
    assert "--overwrite" in refused.stderr

    result = runner.invoke(app, ["-q", "demo", "--out", str(out), "--overwrite", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "AP_dsb per image" in result.stdout
    for path in (out / "project.zarr", out / "labels", out / "preview.png"):
        assert str(path) in result.stdout
        assert path.exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_a_folder_the_demo_did_not_make_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.tif").write_bytes(b"not the demo's")

    with pytest.raises(OutputExistsError, match="not a folder made by `embedseg demo`"):
        demo(_tiny(out, overwrite=True))
    result = runner.invoke(app, ["demo", "--out", str(out), "--overwrite"])
    assert result.exit_code == 1
    assert "not a folder made by `embedseg demo`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["precious.tif"]

    file = tmp_path / "file.txt"
    file.write_text("x")
    assert runner.invoke(app, ["demo", "--out", str(file)]).exit_code == 1
    assert file.read_text() == "x"


@pytest.mark.slow
def test_the_default_demo_segments_its_test_images_well(tmp_path: Path) -> None:
    report = demo(DemoConfig(out=tmp_path / "demo", device="cpu"))
    assert report.ap(0.5) > 0.8
