"""Benchmarks of one training step (issue: model, loss, clustering and train)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch


def _step_case(
    ndim: int, shape: tuple[int, ...], batch: int, objects: int, radius: int
) -> dict[str, Any]:
    from embedseg_cli.method.loss import embedseg_loss
    from embedseg_cli.method.model import BranchedERFNet

    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = BranchedERFNet(1, ndim)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    images = torch.rand(batch, 1, *shape)
    labels = torch.zeros(batch, *shape, dtype=torch.long)
    grid = np.indices(shape)
    centres = []
    for item in range(batch):
        ids, points = [], []
        for label in range(1, objects + 1):
            centre = [int(rng.integers(radius, s - radius)) for s in shape]
            inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
            labels[item][torch.from_numpy(inside)] = label
            ids.append(label)
            points.append(centre)
        centres.append((torch.tensor(ids), torch.tensor(points, dtype=torch.float64)))
    weight = 10.0 if ndim == 2 else 9.0
    spacing = (1.0,) * ndim

    def step() -> None:
        raw = model(images)
        loss, _ = embedseg_loss(raw, labels, centres, foreground_weight=weight, spacing=spacing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    step()
    times = []
    for _ in range(7):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"seconds": round(statistics.median(times), 3)}


def train_step_2d(quick: bool = False) -> list[dict[str, Any]]:
    """Forward, loss, backward and Adam step of a 2D batch 2x1x256x256, 12 objects per crop."""
    row = _step_case(2, (256, 256), 2, 12, 10)
    row["result"] = f"{row['seconds']:.3f} s per step"
    row["notes"] = (
        "original on this machine: 0.49-0.52 s, peak 0.77 GB (reference notes, section 3c)"
    )
    return [row]


def train_step_3d(quick: bool = False) -> list[dict[str, Any]]:
    """Forward, loss, backward and Adam step of a 3D batch 1x1x32x128x128, 20 objects."""
    row = _step_case(3, (32, 128, 128), 1, 20, 7)
    row["result"] = f"{row['seconds']:.3f} s per step"
    row["notes"] = "original on this machine: 1.8-2.3 s, peak 1.79 GB (reference notes, section 3c)"
    return [row]
