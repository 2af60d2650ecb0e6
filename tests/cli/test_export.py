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

    assert result.exit_code == 1, "an input error, as for predict --out x.png"
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


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _two_label_images(folder: Path) -> Path:
    """A folder ``pred`` of two label TIFFs, ``a`` and ``b``, and ``x/images`` of their images."""
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        labels = np.zeros((16, 16), np.uint16)
        labels[2:6, 2:6] = 1
        (folder / "pred").mkdir(exist_ok=True)
        (folder / "x" / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / "pred" / f"{name}.tif", labels)
        tifffile.imwrite(
            folder / "x" / "images" / f"{name}.tif", rng.integers(0, 255, (16, 16), np.uint8)
        )
    return folder / "pred"


def test_overwrite_never_replaces_a_folder_that_holds_the_image(tmp_path: Path) -> None:
    pred = _two_label_images(tmp_path)
    out = tmp_path / "x"
    (out / "notes.txt").write_text("keep me\n")
    before = _files(tmp_path)

    for format_ in ("preview", "tiff", "ome-zarr", "csv"):
        result = CliRunner().invoke(
            app,
            [
                *("export", "labels", str(pred), "--format", format_),
                *("--image", str(out / "images"), "--out", str(out), "--overwrite"),
            ],
        )
        assert result.exit_code == 1, format_
        line = _error(result)
        assert f"--out {out} contains the input --image {out / 'images'}" in line
        assert "choose an --out outside it" in line

    assert _files(tmp_path) == before
    assert not list(tmp_path.glob(".*"))


def test_overwrite_never_replaces_the_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, np.eye(16, dtype=np.uint16))
    before = labels.read_bytes()

    result = CliRunner().invoke(
        app,
        ["export", "labels", str(labels), "-f", "tiff", "-o", str(labels), "--overwrite"],
    )

    assert result.exit_code == 1
    assert f"--out {labels} is the input PRED {labels}" in _error(result)
    assert labels.read_bytes() == before


def test_overwrite_replaces_only_a_folder_of_earlier_outputs(tmp_path: Path) -> None:
    pred = _two_label_images(tmp_path)
    out = tmp_path / "previews"
    args = ["export", "labels", str(pred), "-f", "preview", "-o", str(out), "--overwrite"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    # An earlier export of the same kind is replaced.
    assert CliRunner().invoke(app, args).exit_code == 0

    for extra in ("notes.txt", "sub/c.png"):
        (out / extra).parent.mkdir(exist_ok=True)
        (out / extra).write_text("keep me\n")
        before = _files(tmp_path)

        result = CliRunner().invoke(app, args)

        assert result.exit_code == 1, extra
        line = _error(result)
        assert f"{out} holds {extra.split('/')[0]}, which this export does not write" in line
        assert "choose another --out, or remove it yourself" in line
        assert _files(tmp_path) == before
        (out / extra).unlink()


def test_overwrite_never_replaces_a_folder_with_a_file(tmp_path: Path) -> None:
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, np.eye(16, dtype=np.uint16))
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")

    for format_ in ("tiff", "csv", "preview"):
        result = CliRunner().invoke(
            app,
            ["export", "labels", str(labels), "-f", format_, "-o", str(out), "--overwrite"],
        )
        assert result.exit_code == 1, format_
        assert f"{out} is a folder: --overwrite replaces only an earlier export" in _error(result)
    # Nor anything but an OME-Zarr label image with an OME-Zarr export.
    result = CliRunner().invoke(
        app, ["export", "labels", str(labels), "-f", "ome-zarr", "-o", str(out), "--overwrite"]
    )
    assert result.exit_code == 1
    assert f"{out} is not an OME-Zarr label image" in _error(result)
    assert (out / "notes.txt").read_text() == "keep me\n"


def test_model_overwrite_replaces_only_a_file(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")

    result = CliRunner().invoke(
        app,
        ["export", "model", "dsb2018-fluo", "-f", "torchscript", "-o", str(out), "--overwrite"],
    )

    assert result.exit_code == 1
    line = _error(result)
    assert f"{out} is a folder: --overwrite replaces only an earlier export" in line
    assert "choose another --out, or remove it yourself" in line
    assert (out / "notes.txt").read_text() == "keep me\n"


def test_model_overwrite_never_replaces_the_model(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"the only copy")

    result = CliRunner().invoke(
        app, ["export", "model", str(model), "-f", "torchscript", "-o", str(model), "--overwrite"]
    )

    assert result.exit_code == 1
    assert f"--out {model} is the input MODEL {model}" in _error(result)
    assert model.read_bytes() == b"the only copy"
