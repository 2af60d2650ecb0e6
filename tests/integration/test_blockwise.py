"""Block-wise clustering gives the whole-volume labels, whatever the blocks."""

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from embedseg_cli.blockwise.grid import block_grid, relabel_keys
from embedseg_cli.method.clustering import find_instances
from embedseg_cli.method.heads import activate, embed
from embedseg_cli.predict.engine import ModelKey
from embedseg_cli.predict.plan import Plan
from embedseg_cli.predict.stages import cluster_block

SCALE = 64.0


def _raw_outputs(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Raw network outputs of touching disks (2D) or balls (3D): offsets towards each
    object's centre, a seed bump per object, a bandwidth that fits the object size."""
    ndim = len(shape)
    grid = np.indices(shape).astype(np.float64)
    labels = np.zeros(shape, np.int64)
    centres = []
    spacing = 9 if ndim == 2 else 7
    for point in np.ndindex(*[n // spacing for n in shape]):
        centre = (np.array(point) + 0.5) * spacing + rng.uniform(-1.5, 1.5, ndim)
        radius = rng.uniform(3.0, 5.5)
        inside = ((grid - centre.reshape(-1, *[1] * ndim)) ** 2).sum(0) <= radius**2
        labels[inside & (labels == 0)] = len(centres) + 1
        centres.append(centre)
    offsets = np.zeros((ndim, *shape))
    seed = np.full(shape, -6.0)
    for label, centre in enumerate(centres, start=1):
        mask = labels == label
        for axis in range(ndim):
            offsets[axis][mask] = (centre[axis] - grid[axis][mask]) / SCALE
        distance = np.sqrt(((grid[:, mask] - centre[:, None]) ** 2).sum(0))
        seed[mask] = 4.0 - distance + rng.normal(0, 0.05, mask.sum())
    offsets += rng.normal(0, 0.2 / SCALE, offsets.shape)
    raw_offsets = np.arctanh(np.clip(offsets, -0.99, 0.99))
    # exp(10 s) (d / SCALE)^2 = ln 2 at d = 3 px
    sigma = np.full((ndim, *shape), np.log(np.log(2) / (3.0 / SCALE) ** 2) / 10)
    raw = np.concatenate([raw_offsets, sigma, seed[None]]).astype(np.float16)
    return raw, len(centres)


@pytest.mark.parametrize(
    ("shape", "blocks"),
    [((96, 80), [(16, 16), (24, 40), (96, 80)]), ((24, 40, 32), [(8, 16, 16), (24, 8, 32)])],
)
def test_blockwise_labels_equal_whole_volume_labels(
    tmp_path: Path, shape: tuple[int, ...], blocks: list[tuple[int, ...]]
) -> None:
    rng = np.random.default_rng(3)
    raw, n_objects = _raw_outputs(shape, rng)
    ndim = len(shape)
    plan = Plan(
        shape=shape,
        ndim=ndim,
        window=shape,
        overlap=(0,) * ndim,
        block=shape,
        halo=(12,) * ndim,
        low=(0.0,),
        high=(1.0,),
        tta=False,
        model=ModelKey("unused", None, "best", "cpu"),
        spacing=(1.0,) * ndim,
        scale=SCALE,
        foreground=0.5,
        seed=0.9,
        min_object_size=5,
    )
    tensor = torch.from_numpy(raw.astype(np.float32))[None]
    activations = activate(tensor, ndim)
    whole = find_instances(
        embed(tensor[:, :ndim], origin=(0,) * ndim, scale=SCALE)[0].numpy(),
        activations.bandwidth[0].numpy(),
        activations.seed[0, 0].numpy(),
        min_object_size=5,
    ).labels
    assert len(np.unique(whole)) - 1 >= 0.9 * n_objects
    for block_shape in blocks:
        work = tmp_path / "x".join(map(str, block_shape))
        work.mkdir()
        outputs = zarr.create_array(work / "outputs", data=raw, chunks=(2 * ndim + 1, *block_shape))
        keys = zarr.create_array(work / "keys", shape=shape, chunks=block_shape, dtype="uint64")
        grid = block_grid(shape, block_shape)
        for block in grid:
            cluster_block(block, plan, outputs, keys, work / block.key)
        names = np.unique(np.concatenate([np.load(work / b.key) for b in grid]))
        labels = relabel_keys(np.asarray(keys[...]), names)
        # Equal up to renumbering: the same partition of the pixels.
        pairs = np.unique(np.stack([whole.ravel(), labels.ravel()]), axis=1)
        assert len(pairs[0]) == len(np.unique(whole)) == len(np.unique(labels)), block_shape
        # And numbered by seed position: the same numbers with any blocks.
        if block_shape == blocks[0]:
            first = labels
        else:
            assert np.array_equal(labels, first)
