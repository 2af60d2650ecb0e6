"""predict's options: the object table, reclustering, the dry run, batches, the window size
from a memory budget, voxel-size rescaling, OME-Zarr 0.4 and a damaged input."""

import csv
import json
import logging
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from typer.testing import CliRunner

from embedseg_cli.blockwise.grid import tile_grid
from embedseg_cli.cli import app
from embedseg_cli.config import PredictConfig
from embedseg_cli.errors import InputError, OutputExistsError
from embedseg_cli.io.models import read_model, write_compact
from embedseg_cli.predict import predict
from embedseg_cli.predict.plan import geometry as _geometry
from embedseg_cli.predict.source import Source as _Source
from embedseg_cli.predict.source import raise_unreadable_chunk as _raise_unreadable_chunk

LOOSE = {"seed_threshold": 0.5, "foreground_threshold": 0.45, "min_object_size": 0}
SMALL = {"tile_size": (64,), "overlap": (16,), "block_size": (64,), "tta": False}


def _config(model: Path | str, image: Path, out: Path, **options: object) -> PredictConfig:
    return PredictConfig(
        input=image, model=str(model), out=out, device="cpu", **{**LOOSE, **SMALL, **options}
    )


def _labels(out: Path) -> np.ndarray:
    if out.suffix == ".tif":
        return tifffile.imread(out)
    return np.asarray(zarr.open_array(out / "0")[...])


def test_the_table_has_a_row_per_object_with_its_measurements(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    table = tmp_path / "objects.csv"
    report = predict(_config(model_store, image_2d, tmp_path / "l.tif", table=table))
    labels = _labels(tmp_path / "l.tif")
    rows = list(csv.DictReader(table.open()))
    assert report.objects == labels.max() == len(rows) >= 10
    counts = np.bincount(labels.ravel())
    for row in rows:
        label = int(row["label"])
        where = np.argwhere(labels == label)
        assert int(row["voxels"]) == counts[label] == len(where)
        assert float(row["centroid_y"]) == pytest.approx(where[:, 0].mean(), abs=1e-3)
        assert float(row["centroid_x"]) == pytest.approx(where[:, 1].mean(), abs=1e-3)
        assert int(row["bbox_start_y"]) == where[:, 0].min()
        assert int(row["bbox_stop_x"]) == where[:, 1].max() + 1
        # Every instance grew from a seed above the seed threshold, inside the image.
        assert float(row["seed_score"]) > LOOSE["seed_threshold"]
        assert 0 <= float(row["seed_y"]) < labels.shape[0]


def test_recluster_gives_the_labels_of_a_fresh_run_with_the_new_thresholds(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    kept = tmp_path / "kept.zarr"
    predict(_config(model_store, image_2d, kept, keep_outputs=True))
    first = _labels(kept)
    new = {"seed_threshold": 0.6, "foreground_threshold": 0.5, "min_object_size": 5}
    fresh = tmp_path / "fresh.zarr"
    predict(_config(model_store, image_2d, fresh, **new))
    report = predict(PredictConfig(input=kept, recluster=True, table=tmp_path / "t.csv", **new))
    again = _labels(kept)
    assert np.array_equal(again, _labels(fresh))
    assert not np.array_equal(again, first)
    assert report.objects == again.max()
    assert (kept / "embedseg_outputs").is_dir(), "the outputs stay for the next recluster"
    assert zarr.open_group(kept).attrs["embedseg"]["complete"] is True
    assert len(list(csv.DictReader((tmp_path / "t.csv").open()))) == again.max()


def test_recluster_without_kept_outputs_says_how_to_get_them(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    out = tmp_path / "plain.zarr"
    predict(_config(model_store, image_2d, out))
    with pytest.raises(InputError, match="--keep-outputs"):
        predict(PredictConfig(input=out, recluster=True))


def test_the_recluster_command_and_the_deprecated_flag_give_the_same_labels(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    kept = tmp_path / "kept.zarr"
    predict(_config(model_store, image_2d, kept, keep_outputs=True))
    options = [
        "--seed-threshold",
        "0.5",
        "--foreground-threshold",
        "0.45",
        "--min-object-size",
        "0",
    ]
    runner = CliRunner()
    command = runner.invoke(
        app, ["recluster", str(kept), *options, "--out", str(tmp_path / "a.tif")]
    )
    assert command.exit_code == 0, command.output
    flag = runner.invoke(
        app, ["predict", str(kept), "--recluster", *options, "--out", str(tmp_path / "b.tif")]
    )
    assert flag.exit_code == 0, flag.output
    assert "deprecated" in flag.stderr
    assert "embedseg recluster" in flag.stderr
    assert "deprecated" not in command.stderr
    assert np.array_equal(_labels(tmp_path / "a.tif"), _labels(tmp_path / "b.tif"))
    assert _labels(tmp_path / "a.tif").max() > 0


def test_a_dry_run_writes_nothing_and_describes_the_plan(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    out = tmp_path / "never.zarr"
    report = predict(_config(model_store, image_2d, out, dry_run=True))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    (plan,) = report.plans
    assert plan["windows"] == len(tile_grid((150, 130), (64, 64), (16, 16)))
    assert plan["blocks"] == 9
    assert plan["block_grid"] == [3, 3]
    assert plan["estimated_seconds"] > 0
    assert plan["estimated_peak_memory_per_worker"] > 400e6


def test_batches_of_windows_give_the_same_outputs(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    stored = []
    for name, options in {
        "one": {},
        "sixteen": {"batch_size": 16},
        "tta": {"tta": True},
        "tta3": {"tta": True, "batch_size": 3},
    }.items():
        out = tmp_path / f"{name}.zarr"
        predict(_config(model_store, image_2d, out, keep_outputs=True, **options))
        stored.append(np.asarray(zarr.open_array(out / "embedseg_outputs")[...], np.float32))
    np.testing.assert_allclose(stored[0], stored[1], atol=2e-3)
    np.testing.assert_allclose(stored[2], stored[3], atol=2e-3)
    assert not np.allclose(stored[0], stored[2], atol=2e-3), "TTA must change the outputs"


def test_the_window_follows_the_memory_budget() -> None:
    cpu = torch.device("cpu")
    windows = []
    for budget in (10**8, 10**9, 10**10):
        config = PredictConfig(input=Path("x.tif"), memory_budget=budget)
        geometry = _geometry((4096, 4096), config, 2, cpu, parallel=2)
        assert all(w % 8 == 0 and 128 <= w <= 1024 for w in geometry.window)
        windows.append(geometry.window[0])
    assert windows[0] < windows[1] < windows[2] == 1024
    given = PredictConfig(input=Path("x.tif"), tile_size=(96,), memory_budget=10**8)
    assert _geometry((4096, 4096), given, 2, cpu, parallel=2).window == (96, 96)
    small = _geometry((40, 52), given, 2, cpu, parallel=2)
    assert small.window == (40, 52), "a window never exceeds the image"
    blocked = PredictConfig(
        input=Path("x.tif"), block_size=(64, 256, 256), memory_budget=10**10, tta=False
    )
    volume = _geometry((512, 2048, 2048), blocked, 3, cpu, parallel=2)
    assert volume.window == (64, 256, 256), "an automatic window never exceeds the block"


def test_inputs_of_another_voxel_size_are_resampled_to_the_models(
    model_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained = read_model(model_store)
    attrs = {**trained.attrs, "data": {**trained.attrs["data"], "voxel_size": [0.5, 0.5]}}
    model = write_compact(type(trained)(trained.tensors, attrs, "test"), tmp_path / "m.npz")
    image = tmp_path / "coarse.tif"
    pixels = tifffile.imread(next((model_store.parent / "src" / "train" / "images").iterdir()))
    # 1 micron pixels (ImageJ resolution: pixels per unit) for a model trained on 0.5.
    tifffile.imwrite(image, pixels, imagej=True, resolution=(1.0, 1.0), metadata={"unit": "um"})
    plan = predict(_config(model, image, tmp_path / "a.tif", dry_run=True)).plans[0]
    assert plan["input_shape"] == [40, 40]
    assert plan["shape"] == [80, 80]
    predict(_config(model, image, tmp_path / "a.tif"))
    assert _labels(tmp_path / "a.tif").shape == (40, 40)
    with caplog.at_level(logging.WARNING):
        plan = predict(_config(model, image, tmp_path / "b.tif", dry_run=True, rescale=False))
    assert plan.plans[0]["shape"] == [40, 40]
    assert "leave out --no-rescale" in caplog.text


def test_inputs_without_a_voxel_size_are_downsampled_as_the_training_images(
    model_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained = read_model(model_store)
    data = {**trained.attrs["data"], "voxel_size": [2.0, 2.0], "downsample": [2, 2]}
    model = write_compact(
        type(trained)(trained.tensors, {**trained.attrs, "data": data}, "test"), tmp_path / "m.npz"
    )
    pixels = tifffile.imread(next((model_store.parent / "src" / "train" / "images").iterdir()))
    image = tmp_path / "plain.zarr"  # a bare Zarr array: no voxel size anywhere
    zarr.create_array(image, data=pixels, chunks=pixels.shape)
    with caplog.at_level(logging.INFO):
        plan = predict(_config(model, image, tmp_path / "a.tif", dry_run=True)).plans[0]
    assert plan["input_shape"] == [40, 40]
    assert plan["shape"] == [20, 20]
    assert "downsampling it 2x2 times" in caplog.text
    predict(_config(model, image, tmp_path / "a.tif"))
    assert _labels(tmp_path / "a.tif").shape == (40, 40)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan = predict(_config(model, image, tmp_path / "b.tif", dry_run=True, rescale=False))
    assert plan.plans[0]["shape"] == [40, 40]
    assert "leave out --no-rescale" in caplog.text
    # Downsampled to a voxel size of 1: still a known voxel size, so 0.5 inputs are resampled.
    data = {**data, "voxel_size": [1.0, 1.0]}
    model = write_compact(
        type(trained)(trained.tensors, {**trained.attrs, "data": data}, "test"), tmp_path / "n.npz"
    )
    fine = tmp_path / "fine.tif"
    tifffile.imwrite(fine, pixels, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    plan = predict(_config(model, fine, tmp_path / "c.tif", dry_run=True)).plans[0]
    assert plan["shape"] == [20, 20]


def test_ome_zarr_04_output_for_older_viewers(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    out = tmp_path / "old.zarr"
    predict(_config(model_store, image_2d, out, ngff_version="0.4"))
    attrs = json.loads((out / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert "image-label" in attrs
    assert zarr.open_array(out / "0").dtype == np.uint32


def test_a_damaged_chunk_is_reported_with_its_block_and_nothing_is_written(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    source = tmp_path / "input.zarr"
    array = zarr.create_array(source, shape=(150, 130), chunks=(32, 32), dtype="uint16")
    array[...] = tifffile.imread(image_2d)
    chunk = source / "c" / "2" / "1"
    chunk.write_bytes(chunk.read_bytes()[:7])  # truncated
    out = tmp_path / "labels.zarr"
    with pytest.raises(InputError, match=r"cannot read .*input.zarr at voxels 0:150 x 0:130"):
        predict(_config(model_store, source, out))
    assert not out.exists()
    # In an input read in several chunks, the chunk that fails is named.
    with pytest.raises(InputError, match=r"at voxels 64:96 x 32:64: "):
        _raise_unreadable_chunk(da.from_zarr(zarr.open_array(source))[None], "input.zarr")
    # Where the percentiles are given (a store's images), the window that fails names its
    # block.
    with pytest.raises(InputError, match=r"at voxels .* \(block 1\.0\)"):
        _Source("input.zarr", da.from_zarr(zarr.open_array(source))[None]).read(
            (48, 16), (64, 64), "1.0"
        )
    assert not out.exists()
    result = CliRunner().invoke(
        app,
        ["predict", str(source), "--model", str(model_store), "--out", str(out), "--no-tta"],
    )
    assert result.exit_code == 1
    assert "damaged" in result.stderr
    assert not out.exists()


def test_the_cli_prints_the_plan_of_a_dry_run(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(image_2d),
            "--model",
            str(model_store),
            "--out",
            str(tmp_path / "x.tif"),
            "--dry-run",
            "--no-tta",
            "--block-size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "expected run time" in result.stdout
    assert "peak memory per worker" in result.stdout
    assert not (tmp_path / "x.tif").exists()
    bad = CliRunner().invoke(
        app, ["predict", str(image_2d), "--out", "x.tif", "--memory-budget", "lots"]
    )
    assert bad.exit_code == 2


def test_nan_intensities_are_background_and_the_rest_is_segmented(
    model_store: Path, image_2d: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pixels = tifffile.imread(image_2d).astype(np.float32)
    tifffile.imwrite(tmp_path / "clean.tif", pixels)
    clean = predict(_config(model_store, tmp_path / "clean.tif", tmp_path / "a.tif"))
    masked = pixels.copy()
    masked[:, :8] = np.nan  # a padded border, as registration leaves
    masked[30, 30] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", masked)
    with caplog.at_level(logging.WARNING):
        report = predict(_config(model_store, tmp_path / "nan.tif", tmp_path / "b.tif"))
    assert "nan.tif has NaN or infinite intensities" in caplog.text
    assert clean.objects > 0
    assert report.objects >= clean.objects // 2, "one NaN must not wipe out the segmentation"
    inside_a, inside_b = (
        _labels(tmp_path / "a.tif")[:, 16:] > 0,
        _labels(tmp_path / "b.tif")[:, 16:] > 0,
    )
    assert (inside_a & inside_b).sum() >= 0.9 * inside_a.sum(), "away from the NaN, the same cells"

    tifffile.imwrite(tmp_path / "void.tif", np.full_like(pixels, np.nan))
    with pytest.raises(InputError, match=r"void\.tif has no finite intensity"):
        predict(_config(model_store, tmp_path / "void.tif", tmp_path / "c.tif"))


def test_an_input_of_booleans_is_refused_with_the_reason(model_store: Path, tmp_path: Path) -> None:
    image = tmp_path / "flags.zarr"
    zarr.create_array(image, data=np.zeros((40, 40), bool), chunks=(40, 40))
    with pytest.raises(InputError, match=r"flags\.zarr holds bool values: give an image of"):
        predict(_config(model_store, image, tmp_path / "a.tif"))
    assert not (tmp_path / "a.tif").exists()


def test_labels_written_into_an_ome_zarr_image_are_kept_without_overwrite(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    writer = pytest.importorskip("ome_zarr.writer")
    image = tmp_path / "image.zarr"
    group = zarr.open_group(image, mode="w", zarr_format=3)
    writer.write_image(tifffile.imread(image_2d), group, axes="yx", scale_factors=[])
    config = PredictConfig(input=image, model=str(model_store), device="cpu", **{**LOOSE, **SMALL})
    predict(config)
    labels = image / "labels" / "embedseg"
    first = np.asarray(zarr.open_array(labels / "0")[...])
    assert json.loads((labels / "zarr.json").read_text())["attributes"]["embedseg"]["complete"]
    # A second run with other settings is refused rather than replacing the labels.
    again = config.model_copy(update={"seed_threshold": 0.99})
    with pytest.raises(OutputExistsError, match=r"labels/embedseg already exists: pass --over"):
        predict(again)
    assert np.array_equal(zarr.open_array(labels / "0")[...], first)
    predict(again.model_copy(update={"overwrite": True}))
    assert not np.array_equal(zarr.open_array(labels / "0")[...], first)


def test_a_folder_gets_a_table_per_image_named_after_it(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = tifffile.imread(image_2d)
    tifffile.imwrite(folder / "a.tif", pixels)
    tifffile.imwrite(folder / "b.tif", pixels[:, ::-1])
    predict(_config(model_store, folder, tmp_path / "labels", table=tmp_path / "t.csv"))
    assert not (tmp_path / "t.csv").exists()
    for name in ("a", "b"):
        rows = list(csv.DictReader((tmp_path / f"t-{name}.csv").open()))
        assert len(rows) == _labels(tmp_path / "labels" / f"{name}.tif").max() > 0


def test_an_overlap_above_half_the_window_is_reduced_with_a_warning(
    model_store: Path, image_2d: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        plan = predict(
            _config(model_store, image_2d, tmp_path / "a.tif", overlap=(48,), dry_run=True)
        ).plans[0]
    assert plan["overlap"] == [32, 32]
    assert "--overlap 48x48 is more than half of the window 64x64: using 32x32" in caplog.text
