"""``embedseg export`` on the command line: exit codes and one-line messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.config import PrepareConfig
from embedseg_cli.prepare import prepare


def _error(result: object) -> str:
    stderr = str(getattr(result, "stderr", ""))
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_export_of_a_store_without_a_checkpoint_says_to_train(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    store = tmp_path / "p.zarr"
    prepare(PrepareConfig(source=make_dataset(n_images=2, shape=(32, 32)), out=store))
    out = tmp_path / "model.pt"

    result = CliRunner().invoke(
        app, ["export", "model", str(store), "--format", "torchscript", "--out", str(out)]
    )

    assert result.exit_code == 1
    line = _error(result)
    assert str(store) in line
    assert "embedseg train" in line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr", "src"]


def test_float_labels_are_refused_with_the_file_named(tmp_path: Path) -> None:
    labels = tmp_path / "probabilities.tif"
    tifffile.imwrite(labels, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    out = tmp_path / "labels.tif"

    result = CliRunner().invoke(
        app, ["export", "labels", str(labels), "--format", "tiff", "--out", str(out)]
    )

    assert result.exit_code == 1
    line = _error(result)
    assert str(labels) in line
    assert "float32" in line
    assert "integers" in line
    assert not out.exists()


def test_an_existing_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, np.eye(16, dtype=np.uint16))
    out = tmp_path / "objects.csv"
    out.write_text("keep me\n")
    before = out.stat().st_mtime_ns

    result = CliRunner().invoke(
        app, ["export", "labels", str(labels), "--format", "csv", "--out", str(out)]
    )

    assert result.exit_code == 1
    line = _error(result)
    assert str(out) in line
    assert "--overwrite" in line
    assert out.read_text() == "keep me\n"
    assert out.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "objects.csv"]


def test_an_existing_model_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "model.zip"
    out.write_bytes(b"an older package")

    result = CliRunner().invoke(
        app, ["export", "model", "dsb2018-fluo", "--format", "bioimageio", "--out", str(out)]
    )

    assert result.exit_code == 1
    assert "--overwrite" in _error(result)
    assert out.read_bytes() == b"an older package"


def test_an_output_of_the_wrong_kind_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["export", "model", "p.zarr", "--format", "bioimageio", "--out", str(tmp_path / "m.pt")],
    )

    assert result.exit_code == 2, "a usage error"
    line = _error(result)
    assert "--out" in line
    assert ".zip" in line


def test_labels_export_prints_a_summary(tmp_path: Path) -> None:
    labels = np.zeros((16, 16), np.uint16)
    labels[2:6, 2:6] = 1
    labels[9:14, 8:12] = 2
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    out = tmp_path / "objects.csv"

    result = CliRunner().invoke(
        app,
        ["export", "labels", str(tmp_path / "labels.tif"), "-f", "csv", "-o", str(out), "--json"],
    )

    assert result.exit_code == 0, result.output
    assert '"objects": 2' in result.stdout
    assert len(out.read_text().strip().splitlines()) == 3
