"""The per-object table of a prediction: one row per label, measured block by block.

Besides the columns of :func:`embedseg_cli.data.objects.object_table`, each object has its
seed: the position (in the input's voxels) and score of the pixel it was grown from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
from dask.delayed import delayed
from numpy.typing import NDArray

from embedseg_cli.data.objects import measure_block, merge, object_table
from embedseg_cli.io.work import WorkArray, written_labels
from embedseg_cli.method.heads import seediness_of
from embedseg_cli.predict.engine import Engine

__all__ = ["labels_as_written", "objects_table"]


def objects_table(
    labels: da.Array,
    mapping: NDArray[np.uint64],
    outputs: WorkArray,
    factors: tuple[float, ...] | None,
    engine: Engine,
) -> dict[str, NDArray[Any]]:
    """Label, voxel count, centroid, bounding box, seed position and seed score per object.

    ``mapping`` holds the seed names of labels 1..N, ``outputs`` the network outputs (at
    the model's voxel size) and ``factors`` the input's voxels per model voxel.
    """
    ndim = labels.ndim
    parts = []
    for index in np.ndindex(*labels.numblocks):
        offset = tuple(sum(c[:i]) for c, i in zip(labels.chunks, index, strict=True))
        parts.append(delayed(measure_block)(labels.blocks[index], offset))
    stats = merge(engine.run(parts, "objects"), ndim)
    names = mapping[stats.labels.astype(np.intp) - 1]
    shape = tuple(int(n) for n in outputs.shape[1:])
    seeds = np.stack(np.unravel_index((names - 1).astype(np.intp), shape), axis=1)
    scores = np.asarray(outputs.vindex[(np.full(len(seeds), 2 * ndim), *seeds.T)], np.float32)
    positions = seeds.astype(np.float64)
    if factors is not None:
        positions = (positions + 0.5) * np.asarray(factors) - 0.5
    seed_scores = seediness_of(torch.from_numpy(scores.astype(np.float64))).numpy()
    return object_table(stats, seeds=positions, seed_scores=seed_scores)


def labels_as_written(output: str, labels: da.Array) -> da.Array:
    """The labels as written (read back from a Zarr output rather than computed again)."""
    written = written_labels(Path(output))
    return labels if written is None else written
