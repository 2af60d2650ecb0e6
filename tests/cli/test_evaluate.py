import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.io.store import ProjectStore

runner = CliRunner()


def _evaluate(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["-q", "evaluate", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def _labels(shape: tuple[int, ...] = (32, 32)) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    labels[..., 2:10, 2:10] = 1
    labels[..., 12:20, 4:12] = 2
    labels[..., 20:30, 18:30] = 3
    return labels


def _json(stdout: str) -> dict:  # type: ignore[type-arg]
    return json.loads(stdout)  # type: ignore[no-any-return]


def test_perfect_tiff_pair(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "pred.tif", _labels())
    tifffile.imwrite(tmp_path / "gt.tif", _labels().astype(np.int32))
    code, stdout, _ = _evaluate(tmp_path / "pred.tif", tmp_path / "gt.tif", "--json")
    assert code == 0
    result = _json(stdout)
    assert result["thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    assert [s["ap_dsb"] for s in result["per_image"]] == [1.0] * 9
    assert result["pooled"][0]["tp"] == 3


def test_folders_paired_by_name_with_csv_and_plot(tmp_path: Path) -> None:
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
    gt_a, gt_b = _labels(), _labels()
    pred_a = gt_a.copy()
    pred_b = gt_b.copy()
    pred_b[pred_b == 3] = 0  # one missed object in b
    pred_b[0:2, 0:2] = 9  # one false positive in b
    tifffile.imwrite(tmp_path / "gt" / "a.tif", gt_a)
    tifffile.imwrite(tmp_path / "gt" / "b.tif", gt_b)
    tifffile.imwrite(tmp_path / "pred" / "a.tif", pred_a)
    tifffile.imwrite(tmp_path / "pred" / "b.tif", pred_b)
    code, stdout, stderr = _evaluate(
        tmp_path / "pred",
        tmp_path / "gt",
        "--thresholds",
        "0.5,0.75",
        "--json",
        "--csv",
        tmp_path / "rows.csv",
        "--plot",
        tmp_path / "ap.png",
        "--paper",
        "dsb2018",
    )
    assert code == 0, stderr
    result = _json(stdout)
    assert result["thresholds"] == [0.5, 0.75]
    # a: 3/3; b: TP 2, FP 1, FN 1 -> 2/4. Per image (1 + 0.5) / 2, pooled 5 / 7.
    assert result["per_image"][0]["ap_dsb"] == pytest.approx(0.75)
    assert result["pooled"][0]["ap_dsb"] == pytest.approx(5 / 7)
    with (tmp_path / "rows.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["name"], r["threshold"]) for r in rows] == [
        ("a", "0.5"),
        ("a", "0.75"),
        ("b", "0.5"),
        ("b", "0.75"),
    ]
    assert rows[2]["fp"] == "1"
    assert (tmp_path / "ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_shows_both_aggregations_and_the_paper(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "pred.tif", _labels())
    code, stdout, _ = _evaluate(tmp_path / "pred.tif", tmp_path / "pred.tif", "--paper", "usiigaci")
    assert code == 0
    assert "AP_dsb per image" in stdout
    assert "AP_dsb pooled" in stdout
    assert "0.704" in stdout


def test_3d_zarr_arrays_use_3d_thresholds(tmp_path: Path) -> None:
    labels = _labels((6, 32, 32))
    zarr.create_array(tmp_path / "pred.zarr", data=labels.astype(np.uint32))
    tifffile.imwrite(tmp_path / "gt.tif", labels)
    code, stdout, _ = _evaluate(tmp_path / "pred.zarr", tmp_path / "gt.tif", "--json")
    assert code == 0
    assert _json(stdout)["thresholds"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def test_ome_zarr_labels_are_found(tmp_path: Path) -> None:
    image = zarr.open_group(tmp_path / "image.ome.zarr", mode="w", zarr_format=3)
    labels_group = image.create_group("labels")
    labels_group.attrs["ome"] = {"version": "0.5", "labels": ["cells"]}
    cells = labels_group.create_group("cells")
    cells.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": [{"path": "s0"}]}]}
    cells.create_array("s0", data=_labels().astype(np.uint32))
    tifffile.imwrite(tmp_path / "gt.tif", _labels())
    code, stdout, stderr = _evaluate(tmp_path / "image.ome.zarr", tmp_path / "gt.tif", "--json")
    assert code == 0, stderr
    assert _json(stdout)["pooled"][0]["tp"] == 3


def test_project_store_predictions_against_its_test_masks(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_dataset(n_images=4, splits=("train", "test"))
    out = tmp_path / "p.zarr"
    assert runner.invoke(app, ["-q", "prepare", str(source), "--out", str(out)]).exit_code == 0
    store = ProjectStore.open(out)
    code, _, stderr = _evaluate(out)
    assert code == 1
    assert "embedseg predict" in stderr
    for record in store.images("test"):
        store.write_prediction(record.name, np.asarray(store.mask(record.name)[...]))
    code, stdout, stderr = _evaluate(out, "--json")
    assert code == 0, stderr
    result = _json(stdout)
    assert result["n_images"] == 2
    assert result["per_image"][0]["ap_dsb"] == 1.0


def _fails(expected: str, *args: str | Path, code: int = 1) -> str:
    exit_code, stdout, stderr = _evaluate(*args)
    assert exit_code == code, stdout + stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert expected in lines[0]
    return lines[0]


def test_shape_mismatch_names_both_files(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "pred.tif", _labels())
    tifffile.imwrite(tmp_path / "gt.tif", _labels((1, 30, 32))[0])
    line = _fails("has shape (32, 32) but ground truth", tmp_path / "pred.tif", tmp_path / "gt.tif")
    assert "pred.tif" in line
    assert "gt.tif" in line


def test_unpaired_files(tmp_path: Path) -> None:
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "a.tif", _labels())
        tifffile.imwrite(tmp_path / folder / "b.tif", _labels())
    (tmp_path / "pred" / "b.tif").rename(tmp_path / "pred" / "c.tif")
    _fails("c.tif has no ground truth", tmp_path / "pred", tmp_path / "gt")
    (tmp_path / "pred" / "c.tif").unlink()
    (tmp_path / "pred" / "a.tif").rename(tmp_path / "pred" / "z.tif")
    tifffile.imwrite(tmp_path / "pred" / "b.tif", _labels())
    _fails("has no ground truth of the same name", tmp_path / "pred", tmp_path / "gt")
    (tmp_path / "pred" / "z.tif").unlink()
    _fails("gt/a.tif has no prediction", tmp_path / "pred", tmp_path / "gt")


def test_float_labels(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "pred.tif", _labels().astype(np.float32))
    tifffile.imwrite(tmp_path / "gt.tif", _labels())
    _fails("pred.tif has float32 values", tmp_path / "pred.tif", tmp_path / "gt.tif")


def test_negative_labels(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "pred.tif", -_labels().astype(np.int16))
    tifffile.imwrite(tmp_path / "gt.tif", _labels())
    _fails(
        "pred.tif has negative labels: use 0 for background",
        tmp_path / "pred.tif",
        tmp_path / "gt.tif",
    )


def test_a_plot_of_an_unknown_format_is_refused_before_the_work(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "gt.tif", _labels())
    result = runner.invoke(
        app,
        ["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "gt.tif"), "--plot", "ap.jpg2"],
    )
    assert result.exit_code == 2
    assert "ap.jpg2 must end in .png, .pdf, .svg" in result.output
    assert not (tmp_path / "ap.jpg2").exists()


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "pred.tif").write_bytes(b"garbage")
    tifffile.imwrite(tmp_path / "gt.tif", _labels())
    _fails("pred.tif cannot be read as a TIFF", tmp_path / "pred.tif", tmp_path / "gt.tif")
    _fails("nope.tif does not exist", tmp_path / "nope.tif", tmp_path / "gt.tif")
    _fails("is not a project store", tmp_path / "gt.tif")


def test_bad_thresholds(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "gt.tif", _labels())
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "gt.tif"), "--thresholds", "a,b"]
    )
    assert result.exit_code == 2
    # Out of range is a usage error too, with the option's name.
    _fails(
        "--thresholds", tmp_path / "gt.tif", tmp_path / "gt.tif", "--thresholds", "0.5,1.5", code=2
    )
