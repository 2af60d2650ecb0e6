"""Benchmarks of the original implementation (``embedseg==0.2.5``) on the inputs of our cases.

Runs with the interpreter of ``benchmarks/.original-venv`` (``setup_env.py`` builds it);
``benchmarks/run.py`` launches it after our cases. Each case runs in a fresh child process so
that its peak RSS is its own, and prints one JSON row per line on stdout whose ``case`` is the
name of our row it pairs with. ``--only`` takes our case names (``clustering``,
``medoid_11k``, ...) or row names.

Cases and their inputs:

* ``medoid_11k``: the original's exact medoid (``generate_center_image``, ``center='medoid'``)
  of the same 11k-pixel disk;
* ``clustering``: ``Cluster.cluster`` / ``Cluster_3d.cluster`` on the synthetic network
  output of ``bench_clustering.synthetic_output``, converted to raw network channels so that
  the original's ``tanh(offset) + grid``, ``exp(10 sigma)`` and ``sigmoid(seed)`` give back the
  same embedding, bandwidth and seed map;
* ``train_step_2d`` / ``train_step_3d``: ``BranchedERFNet`` + ``SpatialEmbLoss`` forward,
  backward and Adam step on the same batch shapes and label images (centre images: the centre
  pixel of each object);
* ``predict_throughput``: the original's ``predict`` / ``predict_3d`` (forward + clustering,
  no TTA, random weights) on the same random image, normalised as its test loader does.

Shims applied before import, as in ``notes/reference-implementation.md`` section 3:
``tifffile.imsave = tifffile.imwrite``, ``np.bool = bool`` (only where numpy lacks ``np.bool``;
numpy 2 has it again and overwriting it breaks ``numpy.ma``), ``torch.Tensor.cuda`` as the
identity (its TTA calls ``.cuda()``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1]
# Threads of torch, OpenMP and numba: as our cases (run.py passes OMP_NUM_THREADS).
THREADS = os.environ.get("OMP_NUM_THREADS", "2")
MIN_OBJECT_SIZE = 36


@dataclass(frozen=True)
class Case:
    """One original case: the name of our case (``--only``) and of the row it pairs with."""

    group: str
    name: str
    quick: bool
    run: Callable[[], dict[str, Any]]


def apply_shims() -> None:
    """Make ``embedseg==0.2.5`` importable with current numpy, tifffile and a CPU torch."""
    import tifffile
    import torch

    if not hasattr(np, "bool"):
        np.bool = bool  # type: ignore[misc,assignment]
    if not hasattr(tifffile, "imsave"):
        tifffile.imsave = tifffile.imwrite  # type: ignore[attr-defined]

    def _identity(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.cuda = _identity  # type: ignore[method-assign,assignment]
    torch.set_num_threads(int(THREADS))


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _median_time(function: Callable[[], Any], warmup: bool, repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (after one warm-up call if ``warmup``)."""
    result = function() if warmup else None
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _bench_clustering() -> types.ModuleType:
    """Our ``bench_clustering`` module, for its generator of synthetic network outputs.

    It imports ``embedseg_cli.method.clustering`` at module level, which this venv lacks; a stub
    stands in for it (only its numpy code is used here).
    """
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import embedseg_cli.method.clustering  # noqa: F401
    except ImportError:
        package = types.ModuleType("embedseg_cli")
        stub = types.ModuleType("embedseg_cli.method.clustering")
        stub.cluster_seeds = None  # type: ignore[attr-defined]
        package.clustering = stub  # type: ignore[attr-defined]
        sys.modules["embedseg_cli"] = package
        sys.modules["embedseg_cli.method.clustering"] = stub
    import bench_clustering

    return bench_clustering


# medoid_11k


def medoid_11k() -> dict[str, Any]:
    """The original's exact medoid of the 11k-pixel disk of our ``medoid_11k``."""
    from EmbedSeg.utils.generate_crops import generate_center_image

    yy, xx = np.mgrid[-60:61, -60:61]
    instance = (np.hypot(yy, xx) < 59.2).astype(np.uint16)
    pixels = int(instance.sum())
    baseline = _peak_rss_mb()
    seconds, centre = _median_time(
        lambda: generate_center_image(instance, "medoid", [1], one_hot=False),
        warmup=True,  # the warm-up also compiles the numba distance matrix
        repeats=3,
    )
    peak = _peak_rss_mb()
    y, x = (int(v[0]) for v in np.nonzero(centre))
    return {
        "seconds": round(seconds, 4),
        "pixels": pixels,
        "medoid": [y, x],
        "baseline_rss_mb": baseline,
        "result": f"{pixels} px, {seconds:.2f} s, +{peak - baseline:.0f} MB peak RSS",
    }


# clustering


def _raw_prediction(
    embedding: np.ndarray, bandwidth: np.ndarray, seed: np.ndarray, scale: float
) -> Any:
    """Raw network channels that the original turns back into these embeddings.

    The original's channels are ``[x, y(, z)]`` offsets, sigmas, then the seed logit, and its
    grid is ``linspace(0, pixel, n)``; with ``pixel = (n - 1) / scale`` that grid is our
    ``position / scale``.
    """
    import torch

    shape = seed.shape
    ndim = len(shape)
    offsets, sigmas = [], []
    for axis in reversed(range(ndim)):
        view = [1] * ndim
        view[axis] = shape[axis]
        grid = torch.linspace(0, (shape[axis] - 1) / scale, shape[axis]).numpy().reshape(view)
        offsets.append(np.arctanh(embedding[axis] - grid))
        sigmas.append(np.log(bandwidth[axis]) / 10.0)
    p = np.clip(seed.astype(np.float64), 1e-7, 1.0 - 1e-7)
    logit = np.log(p / (1.0 - p))
    channels = [*offsets, *sigmas, logit]
    return torch.from_numpy(np.stack([c.astype(np.float32) for c in channels]))


def _clustering(name: str) -> dict[str, Any]:
    from EmbedSeg.utils.utils import Cluster, Cluster_3d

    bench = _bench_clustering()
    _, shape, n, radii, _, in_quick = next(c for c in bench.CASES if c[0] == name)
    embedding, bandwidth, seed_map, truth = bench.synthetic_output(shape, n, radii)
    prediction = _raw_prediction(embedding, bandwidth, seed_map, bench.SCALE)
    del embedding, bandwidth
    pixel = [(size - 1) / bench.SCALE for size in shape]
    if len(shape) == 2:
        cluster = Cluster(shape[0], shape[1], pixel[0], pixel[1], "cpu")
    else:
        cluster = Cluster_3d(*shape, *pixel, "cpu")

    def run() -> Any:
        return cluster.cluster(
            prediction,
            n_sigma=len(shape),
            seed_thresh=0.9,
            fg_thresh=0.5,
            min_mask_sum=0,
            min_unclustered_sum=0,
            min_object_size=MIN_OBJECT_SIZE,
        )

    # The two cases beyond the quick subset take 30-90 s a call: no warm-up, 2 repeats.
    repeats = 3 if in_quick else 2
    seconds, labels = _median_time(run, warmup=in_quick, repeats=repeats)
    labels = labels.numpy().astype(np.int64)
    ious = bench.best_ious(truth, labels)
    recovered = float((ious >= 0.95).mean())
    return {
        "seconds": round(seconds, 4),
        "repeats": repeats,
        "instances": int(labels.max()),
        "recovered_fraction": recovered,
        "min_iou": round(float(ious.min()), 4),
        "result": f"{recovered:.0%} of {n} objects at IoU >= 0.95 (min {ious.min():.4f})",
    }


# training step


def _train_step(ndim: int, shape: tuple[int, ...], batch: int, objects: int, radius: int) -> Any:
    """Median time of the original's training step on the batch of our ``_step_case``.

    One warm-up, median of 3 steps. The label images come from the same numpy generator as
    ours; the images are ``torch.rand`` as ours, but their values differ (our model's init
    draws from torch's generator first).
    """
    import torch
    from EmbedSeg.criterions import SpatialEmbLoss, SpatialEmbLoss_3d
    from EmbedSeg.models import BranchedERFNet, BranchedERFNet_3d

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if ndim == 2:
        model = BranchedERFNet(num_classes=[4, 1], input_channels=1)
        criterion = SpatialEmbLoss(
            grid_y=shape[0],
            grid_x=shape[1],
            pixel_y=1,
            pixel_x=1,
            n_sigma=2,
            foreground_weight=10.0,
        )
    else:
        model = BranchedERFNet_3d(num_classes=[6, 1], input_channels=1)
        criterion = SpatialEmbLoss_3d(
            grid_z=shape[0],
            grid_y=shape[1],
            grid_x=shape[2],
            pixel_z=(shape[0] - 1) / (shape[2] - 1),
            pixel_y=1,
            pixel_x=1,
            n_sigma=3,
            foreground_weight=9.0,
        )
    model.init_output(ndim)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    images = torch.rand(batch, 1, *shape)
    labels = np.zeros((batch, *shape), dtype=np.int16)
    centres = np.zeros((batch, *shape), dtype=bool)
    grid = np.indices(shape)
    for item in range(batch):
        points: list[tuple[int, tuple[int, ...]]] = []
        for label in range(1, objects + 1):
            centre = [int(rng.integers(radius, s - radius)) for s in shape]
            inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
            labels[item][inside] = label
            points.append((label, tuple(centre)))
        for label, point in points:
            if labels[item][point] == label:  # not covered by a later object
                centres[item][point] = True
    instances = torch.from_numpy(labels)
    class_labels = torch.from_numpy((labels > 0).astype(np.uint8))
    centre_images = torch.from_numpy(centres)

    def step() -> None:
        optimizer.zero_grad()
        output = model(images)
        loss = criterion(
            output, instances, class_labels, centre_images, w_inst=1, w_var=10, w_seed=1
        )
        loss.mean().backward()
        optimizer.step()

    seconds, _ = _median_time(step, warmup=True, repeats=3)
    return seconds


def train_step_2d() -> dict[str, Any]:
    """Batch 2x1x256x256, 12 objects of radius 10 per crop."""
    seconds = _train_step(2, (256, 256), 2, 12, 10)
    return {"seconds": round(seconds, 3), "result": f"{seconds:.3f} s per step"}


def train_step_3d() -> dict[str, Any]:
    """Batch 1x1x32x128x128, 20 objects of radius 7."""
    seconds = _train_step(3, (32, 128, 128), 1, 20, 7)
    return {"seconds": round(seconds, 3), "result": f"{seconds:.3f} s per step"}


# predict


def _image(shape: tuple[int, ...], chunks: tuple[int, ...]) -> np.ndarray:
    """The random uint16 image of ``bench_predict._volume`` (same generator, same draws)."""
    rng = np.random.default_rng(1)
    image = np.empty(shape, dtype=np.uint16)
    step = chunks[0]
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        image[start:stop] = rng.integers(80, 120, (stop - start, *shape[1:]), dtype=np.uint16)
    return image


def _predict(
    shape: tuple[int, ...], chunks: tuple[int, ...], warmup: bool, repeats: int
) -> dict[str, Any]:
    import torch
    from EmbedSeg.models import BranchedERFNet, BranchedERFNet_3d
    from EmbedSeg.test import predict, predict_3d
    from EmbedSeg.utils.generate_crops import normalize_min_max_percentile
    from EmbedSeg.utils.utils import Cluster, Cluster_3d

    ndim = len(shape)
    torch.manual_seed(0)
    image = normalize_min_max_percentile(_image(shape, chunks), 1, 99.8, axis=tuple(range(ndim)))
    im = torch.from_numpy(image.astype(np.float32))[None, None]
    if ndim == 2:
        model = BranchedERFNet(num_classes=[4, 1], input_channels=1)
        cluster = Cluster(shape[0], shape[1], 1, 1, "cpu")
        function = predict
    else:
        model = BranchedERFNet_3d(num_classes=[6, 1], input_channels=1)
        cluster = Cluster_3d(*shape, (shape[0] - 1) / (shape[2] - 1), 1, 1, "cpu")
        function = predict_3d
    model.init_output(ndim)
    model.eval()

    def run() -> Any:
        with torch.no_grad():
            return function(
                im, model, False, True, ndim, 0.5, 0.9, 0, 0, MIN_OBJECT_SIZE, cluster, "cpu"
            )

    seconds, (instance_map, _) = _median_time(run, warmup=warmup, repeats=repeats)
    voxels = math.prod(shape)
    return {
        "seconds": round(seconds, 2),
        "repeats": repeats,
        "instances": int(instance_map.max()),
        "result": f"{voxels / seconds / 1e6:.2f} MVox/s (forward + clustering)",
    }


def predict_2d() -> dict[str, Any]:
    """2048x2048, as our ``predict 2D 2048x2048`` without TTA."""
    return _predict((2048, 2048), (512, 512), warmup=True, repeats=2)


def predict_3d() -> dict[str, Any]:
    """64x512x512, as our ``predict 3D 64x512x512``: about 25 s a call, no warm-up."""
    return _predict((64, 512, 512), (32, 256, 256), warmup=False, repeats=2)


def cases() -> list[Case]:
    """All original cases, in the order of our cases."""

    def clustering(name: str) -> Callable[[], dict[str, Any]]:
        return lambda: _clustering(name)

    bench = _bench_clustering()
    listed = [Case("medoid_11k", "medoid_11k", True, medoid_11k)]
    listed += [
        Case("clustering", f"clustering {name}", in_quick, clustering(name))
        for name, _, _, _, _, in_quick in bench.CASES
    ]
    listed += [
        Case("train_step_2d", "train_step_2d", True, train_step_2d),
        Case("train_step_3d", "train_step_3d", True, train_step_3d),
        Case("predict_throughput", "predict 2D 2048x2048", True, predict_2d),
        Case("predict_throughput", "predict 3D 64x512x512", False, predict_3d),
    ]
    return listed


def _run_one(name: str, out: IO[str]) -> None:
    """Run one case in this process and write its row."""
    case = next(c for c in cases() if c.name == name)
    apply_shims()
    started = time.perf_counter()
    row = {"case": case.name, "group": case.group, **case.run()}
    row["peak_rss_mb"] = _peak_rss_mb()
    row["wall_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps(row), file=out, flush=True)


def _run_all(quick: bool, only: list[str] | None) -> None:
    """Run the selected cases, each in a child process, and print their rows."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": THREADS,
        "MKL_NUM_THREADS": THREADS,
        "NUMBA_NUM_THREADS": THREADS,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    for case in cases():
        if (quick and not case.quick) or (
            only and case.group not in only and case.name not in only
        ):
            continue
        print(f"running original {case.name} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--case", case.name],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        rows = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not rows:
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            rows = [
                json.dumps(
                    {"case": case.name, "group": case.group, "result": "FAILED", "notes": lines[-1]}
                )
            ]
        for row in rows:
            print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the cases over a minute")
    parser.add_argument("--only", nargs="*", help="our case names (or row names) to run")
    parser.add_argument("--case", help="run this one row's case in this process")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()
    if args.list:
        for case in cases():
            print(f"{case.group}\t{case.name}\t{'quick' if case.quick else 'full'}")
        return
    if args.case:
        out = sys.stdout
        # The original prints on import and on every 3D loss call: keep stdout for the rows.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        _run_one(args.case, out)
        return
    _run_all(args.quick, args.only)


if __name__ == "__main__":
    main()
