"""Benchmark of the greedy clustering (``embedseg_cli.method.clustering.cluster_seeds``).

Synthetic network outputs as in ``notes/reference-implementation.md`` section 3b: disks
(r 8-14 px) or balls (r 6-10 voxels) that do not overlap; offsets pointing at the object
centre plus 0.5 px of Gaussian noise; a bandwidth whose membership is 0.5 at 4 px; a seed of
1.0 at the centre, 0.55 at the boundary and 0 in the background. The embedding scale is
R = 1024 px and the voxels are isotropic. Settings as the reference's run: seed threshold
0.9, foreground threshold 0.5, minimum object size 36.

``python benchmarks/bench_clustering.py [--quick]`` prints a table; ``benchmarks/run.py``
runs it as the case ``clustering``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed

from embedseg_cli.method.clustering import cluster_seeds

SCALE = 1024.0  # embedding scale R, pixels per embedding unit
MARGIN_PX = 4.0  # the membership exp(-s d^2) is 0.5 at this distance
NOISE_PX = 0.5
MIN_OBJECT_SIZE = 36

# case, shape, number of objects, radius range (inclusive), reference median seconds (3b)
CASES: list[tuple[str, tuple[int, ...], int, tuple[int, int], float, bool]] = [
    ("2D 512x512, 100 disks", (512, 512), 100, (8, 14), 0.107, True),
    ("2D 2048x2048, 1600 disks", (2048, 2048), 1600, (8, 14), 29.0, False),
    ("3D 64x256x256, 200 balls", (64, 256, 256), 200, (6, 10), 2.63, True),
    ("3D 64x512x512, 800 balls", (64, 512, 512), 800, (6, 10), 86.1, False),
]


def place_objects(
    shape: tuple[int, ...], n: int, radii: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Integer centres and radii of ``n`` non-overlapping disks or balls inside ``shape``."""
    ndim = len(shape)
    centres = np.empty((n, ndim), dtype=np.int64)
    radius = np.empty(n, dtype=np.int64)
    placed = 0
    for _ in range(200 * n):
        if placed == n:
            break
        r = int(rng.integers(radii[0], radii[1] + 1))
        c = np.array([rng.integers(r, size - r) for size in shape])
        gap = np.sqrt(((centres[:placed] - c) ** 2).sum(axis=1)) - radius[:placed]
        if (gap > r + 1).all():
            centres[placed], radius[placed] = c, r
            placed += 1
    if placed < n:
        msg = f"could place only {placed} of {n} objects in {shape}"
        raise RuntimeError(msg)
    return centres, radius


def synthetic_output(
    shape: tuple[int, ...], n: int, radii: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Embedding, bandwidth, seed map and true labels of a perfect-but-noisy network."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    centres, radius = place_objects(shape, n, radii, rng)
    embedding = np.empty((ndim, *shape), dtype=np.float32)
    for k in range(ndim):
        view = [1] * ndim
        view[k] = shape[k]
        embedding[k] = (np.arange(shape[k], dtype=np.float32) / SCALE).reshape(view)
    seed_map = np.zeros(shape, dtype=np.float32)
    truth = np.zeros(shape, dtype=np.uint32)
    for label, (c, r) in enumerate(zip(centres, radius, strict=True), start=1):
        window = tuple(slice(ck - r, ck + r + 1) for ck in c)
        local = np.indices((2 * r + 1,) * ndim) - r
        d2 = (local**2).sum(axis=0)
        inside = d2 <= r * r
        truth[window][inside] = label
        seed_map[window][inside] = 1.0 - 0.45 * d2[inside] / (r * r)
        noise = rng.normal(0.0, NOISE_PX, size=(ndim, int(inside.sum())))
        for k in range(ndim):
            # tanh(offset) = (centre - position + noise) / R, so e = (centre + noise) / R.
            embedding[k][window][inside] = ((c[k] + noise[k]) / SCALE).astype(np.float32)
    bandwidth = np.full((ndim, *shape), math.log(2.0) / (MARGIN_PX / SCALE) ** 2, np.float32)
    return embedding, bandwidth, seed_map, truth


def best_ious(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each true object, the IoU of the predicted instance that matches it best."""
    t = truth.ravel().astype(np.int64)
    p = labels.ravel().astype(np.int64)
    n_true, n_pred = int(t.max()), int(p.max())
    true_sizes = np.bincount(t, minlength=n_true + 1)
    pred_sizes = np.bincount(p, minlength=n_pred + 1)
    both = (t > 0) & (p > 0)
    pairs, overlap = np.unique(t[both] * (n_pred + 1) + p[both], return_counts=True)
    ti, pi = pairs // (n_pred + 1), pairs % (n_pred + 1)
    iou = overlap / (true_sizes[ti] + pred_sizes[pi] - overlap)
    best = np.zeros(n_true + 1)
    np.maximum.at(best, ti, iou)
    return best[1:]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Time ``cluster_seeds`` on each case (median of 3 after a warm-up); check recovery."""
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:  # pragma: no cover (torch is a dependency of the project)
        pass
    rows: list[dict[str, Any]] = []
    for name, shape, n, radii, reference, in_quick in CASES:
        if quick and not in_quick:
            continue
        embedding, bandwidth, seed_map, truth = synthetic_output(shape, n, radii)

        def cluster(
            embedding: np.ndarray = embedding,
            bandwidth: np.ndarray = bandwidth,
            seed_map: np.ndarray = seed_map,
        ) -> np.ndarray:
            return cluster_seeds(embedding, bandwidth, seed_map, min_object_size=MIN_OBJECT_SIZE)

        seconds, labels = timed(cluster, repeats=3)
        ious = best_ious(truth, labels)
        recovered = float((ious >= 0.95).mean())
        foreground = int((seed_map > 0.5).sum())
        rows.append(
            {
                "case": f"clustering {name}",
                "shape": list(shape),
                "objects": n,
                "instances": int(labels.max()),
                "foreground_pixels": foreground,
                "seconds": round(seconds, 4),
                "recovered_fraction": recovered,
                "min_iou": round(float(ious.min()), 4),
                "reference_seconds": reference,
                "speedup": round(reference / seconds, 1),
                "result": (f"{recovered:.0%} of {n} objects at IoU >= 0.95 (min {ious.min():.4f})"),
                "notes": f"original (3b): {reference} s, {reference / seconds:.0f}x faster",
            }
        )
    return rows


def clustering(quick: bool = False) -> list[dict[str, Any]]:
    """The entry point of ``benchmarks/run.py``."""
    return run(quick=quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two small cases")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    header = "| case | foreground px | seconds | original s | speed-up | recovered | min IoU |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['case']} | {row['foreground_pixels']:,} | {row['seconds']:.3f} | "
            f"{row['reference_seconds']} | {row['speedup']}x | "
            f"{row['recovered_fraction']:.0%} | {row['min_iou']:.4f} |"
        )


if __name__ == "__main__":
    main()
