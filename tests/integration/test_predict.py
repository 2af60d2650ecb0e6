"""Block-wise prediction: the same labels with any blocks, engine or interruption."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from embedseg_cli.config import PredictConfig
from embedseg_cli.errors import InputError
from embedseg_cli.predict import predict

# An untrained network's seeds hover around 0.5: these thresholds turn them into many small
# objects, which exercises the block-wise clustering on every block.
LOOSE = {"seed_threshold": 0.5, "foreground_threshold": 0.45, "min_object_size": 0}


def _predict(model: Path, image: Path, out: Path, **options: object) -> np.ndarray:
    config = PredictConfig(
        input=image, model=model, out=out, tta=False, device="cpu", **{**LOOSE, **options}
    )
    predict(config)
    return (
        tifffile.imread(out)
        if out.suffix == ".tif"
        else np.asarray(zarr.open_array(out / "0")[...])
    )


def test_network_outputs_do_not_depend_on_the_blocks(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    # The window grid is global: every block size stores the same blended outputs. (That the
    # clustering of those outputs is block-independent is tested on synthetic outputs with
    # separated objects in test_blockwise.py; an untrained network's near-0.5 seeds make one
    # foreground sheet, where no halo bounds the greedy clustering's reach.)
    stored = []
    for block in ((32,), (48, 40), (512,)):
        out = tmp_path / f"b{block[0]}.zarr"
        labels = _predict(
            model_store,
            image_2d,
            out,
            block_size=block,
            tile_size=(64,),
            overlap=(16,),
            keep_outputs=True,
        )
        assert labels.dtype == np.uint32
        assert labels.max() >= 10, "the test needs objects to be meaningful"
        assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
        stored.append(np.asarray(zarr.open_array(out / "embedseg_outputs")[...]))
    assert all(np.array_equal(stored[0], other) for other in stored[1:])


def test_a_distributed_cluster_gives_the_same_labels(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    threads = _predict(
        model_store,
        image_2d,
        tmp_path / "threads.tif",
        block_size=(64,),
        tile_size=(64,),
        overlap=(16,),
    )
    cluster = _predict(
        model_store,
        image_2d,
        tmp_path / "cluster.tif",
        block_size=(64,),
        tile_size=(64,),
        overlap=(16,),
        workers=2,
    )
    assert threads.max() >= 10
    assert np.array_equal(threads, cluster)


def test_zarr_output_is_marked_complete(model_store: Path, image_2d: Path, tmp_path: Path) -> None:
    labels = _predict(model_store, image_2d, tmp_path / "labels.zarr", block_size=(64,))
    assert labels.shape == (150, 130)
    assert zarr.open_group(tmp_path / "labels.zarr").attrs["embedseg"]["complete"] is True
    with pytest.raises(Exception, match="already exists"):
        _predict(model_store, image_2d, tmp_path / "labels.zarr")


def test_wrong_dimensionality_is_refused(model_store: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume.tif"
    tifffile.imwrite(volume, np.zeros((8, 32, 32), np.uint16))
    with pytest.raises(InputError, match="2D images with 1 channel"):
        _predict(model_store, volume, tmp_path / "out.tif")


def test_a_killed_run_resumes_to_the_same_labels(
    model_store: Path, image_2d: Path, tmp_path: Path
) -> None:
    options = [
        "--block-size",
        "32",
        "--tile-size",
        "32",
        "--overlap",
        "8",
        "--no-tta",
        "--device",
        "cpu",
        "--seed-threshold",
        "0.5",
        "--foreground-threshold",
        "0.45",
        "--min-object-size",
        "0",
    ]

    def command(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "embedseg_cli",
            "-q",
            "predict",
            str(image_2d),
            "--model",
            str(model_store),
            "--out",
            str(out),
            *options,
            *extra,
        ]

    reference = tmp_path / "reference.zarr"
    subprocess.run(command(reference), check=True)
    out = tmp_path / "killed.zarr"
    process = subprocess.Popen(command(out))
    markers = tmp_path / ".killed.zarr.embedseg-work" / "network"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(markers.glob("*"))) < 3:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    n_blocks = 5 * 5  # 150 x 130 in blocks of 32
    assert len(list(markers.glob("*"))) < n_blocks, "the run finished its network stage first"
    # Nothing appears at the output before the run is complete.
    assert not out.exists()
    # Resuming with another threshold would mix two clusterings: refused, the work kept.
    other = [*command(out, "--resume"), "--seed-threshold", "0.6"]
    refused = subprocess.run(other, capture_output=True, text=True, check=False)
    assert refused.returncode == 1, refused.stderr
    assert "other settings (thresholds [0.45, 0.5, 0] then [0.45, 0.6, 0])" in refused.stderr
    assert len(list(markers.glob("*"))) > 0
    subprocess.run(command(out, "--resume"), check=True)
    assert np.array_equal(zarr.open_array(out / "0")[...], zarr.open_array(reference / "0")[...])
