"""Benchmarks of ``predict``: throughput and memory scaling (random-weight model)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr


def _model_store(root: Path, ndim: int) -> Path:
    """A project store with an untrained (random-weight) checkpoint of the right kind."""
    import tifffile

    from embedseg_cli.config import PrepareConfig, TrainConfig
    from embedseg_cli.prepare import prepare
    from embedseg_cli.train import train

    rng = np.random.default_rng(0)
    shape = (32, 32) if ndim == 2 else (16, 32, 32)
    for split in ("train", "val"):
        for folder in ("images", "masks"):
            (root / "src" / split / folder).mkdir(parents=True, exist_ok=True)
        mask = np.zeros(shape, np.uint16)
        mask[(slice(4, 12),) * ndim] = 1
        tifffile.imwrite(
            root / "src" / split / "images" / f"{split}.tif",
            rng.integers(0, 255, shape, dtype=np.uint16),
        )
        tifffile.imwrite(root / "src" / split / "masks" / f"{split}.tif", mask)
    store = root / "model.zarr"
    prepare(PrepareConfig(source=root / "src", out=store, crop_size=(16,)))
    train(
        TrainConfig(
            store=store,
            epochs=1,
            steps_per_epoch=1,
            virtual_batch_multiplier=1,
            run="random",
            device="cpu",
        )
    )
    return store


def _volume(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    array = zarr.create_array(
        path, shape=shape, chunks=chunks, dtype="uint16", dimension_names=list("zyx"[-len(shape) :])
    )
    step = chunks[0]
    for start in range(0, shape[0], step):
        block = rng.integers(80, 120, (min(step, shape[0] - start), *shape[1:]), dtype=np.uint16)
        array[start : start + len(block)] = block


def _measured(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` in a fresh process: its wall time, its own peak RSS (MB), its stdout.

    A child of a child, so that ``RUSAGE_CHILDREN`` holds this one command's peak only.
    """
    code = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"done = subprocess.run({command!r}, capture_output=True, text=True, check=True)\n"
        "print(json.dumps([time.perf_counter() - t, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, done.stdout]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, peak, stdout = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, peak, stdout


def _run_predict(
    model: Path, volume: Path, out: Path, *extra: str
) -> tuple[float, float, dict[str, Any]]:
    seconds, peak_mb, stdout = _measured(
        [
            sys.executable,
            "-m",
            "embedseg_cli",
            "-q",
            "predict",
            str(volume),
            "--model",
            str(model),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
            *extra,
        ]
    )
    return seconds, peak_mb, json.loads(stdout)


def predict_throughput(quick: bool = False) -> list[dict[str, Any]]:
    """End-to-end predict (read, network, TTA, clustering, write) on CPU, voxels per second."""
    rows = []
    cases = [
        (
            "2D 2048x2048",
            2,
            (2048, 2048),
            (512, 512),
            "35 s (forward 5.5 s extrap. + clustering 29 s)",
        )
    ]
    if not quick:
        cases.append(
            (
                "3D 64x512x512",
                3,
                (64, 512, 512),
                (32, 256, 256),
                "~26-109 s (forward 23 s + clustering 86 s)",
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, ndim, shape, chunks, reference in cases:
            model = _model_store(root / f"m{ndim}", ndim)
            volume = root / f"v{ndim}.zarr"
            _volume(volume, shape, chunks)
            tta_options = [False] if ndim == 3 else [False, True]
            for tta in tta_options:
                out = root / f"out{ndim}{tta}.zarr"
                extra = [] if tta else ["--no-tta"]
                seconds, peak_mb, report = _run_predict(model, volume, out, *extra)
                voxels = int(np.prod(shape))
                network = report.get("network_seconds")
                rows.append(
                    {
                        "case": f"predict {name}{' TTA' if tta else ''}",
                        "result": f"{voxels / seconds / 1e6:.2f} MVox/s",
                        "seconds": round(seconds, 1),
                        "evaluate_peak_rss_mb": round(peak_mb, 1),
                        "network_seconds": network,
                        "notes": f"original forward+clustering, no TTA: {reference}; "
                        + (
                            f"network {network / report['seconds']:.0%} of the run"
                            if network
                            else ""
                        ),
                    }
                )
    return rows


def predict_memory_scaling(quick: bool = False) -> list[dict[str, Any]]:
    """Peak memory and time of 3D predict on 64x512x512 and 128x1024x1024, same block size."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = _model_store(root / "m3", 3)
        results = []
        for shape in ((64, 512, 512), (128, 1024, 1024)):
            volume = root / f"v{shape[0]}.zarr"
            _volume(volume, shape, (32, 256, 256))
            seconds, peak_mb, _ = subprocess_peak(model, volume, root / f"o{shape[0]}.zarr", BLOCK)
            results.append((shape, seconds, peak_mb))
        (_, t_small, m_small), (_, t_large, m_large) = results
        rows.append(
            {
                "case": "predict memory scaling 3D",
                "result": f"8x the voxels: {m_large / m_small:.2f}x peak memory, {t_large / t_small:.1f}x time",
                "seconds": round(t_large, 1),
                "evaluate_peak_rss_mb": round(m_large, 1),
                "small_peak_mb": round(m_small, 1),
                "small_seconds": round(t_small, 1),
                "notes": f"random-weight model, --no-tta, block {BLOCK}; targets <= 1.2x memory, <= 9x time",
            }
        )
    return rows


BLOCK = "64x256x256"  # smaller than both volumes, so both run the same blocks


def subprocess_peak(
    model: Path, volume: Path, out: Path, block: str
) -> tuple[float, float, dict[str, Any]]:
    """Run one predict in a fresh process and measure its own peak memory."""
    return _run_predict(model, volume, out, "--no-tta", "--block-size", block)


def predict_trained_2d(quick: bool = False) -> list[dict[str, Any]]:
    """Predict with the built-in trained model on a 2048x2048 mosaic of real nuclei images.

    The random-weight model of the other cases finds no seeds, so its clustering does
    almost nothing; here every tile holds real nuclei, and the clustering its real share.
    """
    import tifffile
    from _common import data_or_skip

    data, skipped = data_or_skip("dsb2018-fluo")
    if data is None:
        return [{"case": "predict 2D 2048x2048, trained model", **(skipped or {})}]
    tile = 256
    mosaic = np.zeros((2048, 2048), np.uint8)
    paths = sorted((data / "test" / "images").glob("*.tif"))
    for index in range(64):
        image = tifffile.imread(paths[index % len(paths)])
        if image.ndim == 3:
            image = image[..., 0] if image.shape[-1] <= 4 else image[0]
        piece = image[:tile, :tile]
        y, x = divmod(index, 8)
        mosaic[y * tile : y * tile + piece.shape[0], x * tile : x * tile + piece.shape[1]] = piece
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        volume = root / "mosaic.tif"
        tifffile.imwrite(volume, mosaic)
        for tta in [False] if quick else [False, True]:
            seconds, peak_mb, report = _run_predict(
                Path("dsb2018-fluo"),
                volume,
                root / f"out{tta}.zarr",
                *([] if tta else ["--no-tta"]),
            )
            network = report.get("network_seconds") or 0.0
            rows.append(
                {
                    "case": f"predict 2D 2048x2048, trained model{' TTA' if tta else ''}",
                    "result": f"{mosaic.size / seconds / 1e6:.2f} MVox/s",
                    "seconds": round(seconds, 1),
                    "evaluate_peak_rss_mb": round(peak_mb, 1),
                    "network_seconds": network,
                    "notes": f"built-in dsb2018-fluo, 64 dsb2018-fluo test images tiled, "
                    f"{report['objects']} objects; network {network / report['seconds']:.0%} of the run",
                }
            )
    return rows
