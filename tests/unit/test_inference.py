"""`segment`: clustering raw network outputs, activating the foreground pixels only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedseg_cli.method.clustering import find_instances, find_instances_foreground
from embedseg_cli.method.heads import activate, embed
from embedseg_cli.method.inference import ClusterThresholds, segment


def _raw(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Raw outputs with blobs of high seed score whose offsets point at their centres."""
    ndim = len(shape)
    rng = np.random.default_rng(seed)
    raw = rng.normal(0.0, 0.3, (2 * ndim + 1, *shape)).astype(np.float32)
    raw[2 * ndim] -= 2.0
    grid = np.indices(shape)
    for _ in range(6):
        centre = [rng.uniform(2, n - 2) for n in shape]
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
        inside = distance < 3.5
        raw[2 * ndim][inside] = 4.0 - distance[inside]
        for axis in range(ndim):
            raw[axis][inside] = np.arctanh(
                np.clip((centre[axis] - grid[axis][inside]) / 64.0, -0.9, 0.9)
            )
        raw[ndim : 2 * ndim][:, inside] = 0.6
    return torch.from_numpy(raw).to(torch.float16)


@pytest.mark.parametrize(
    ("shape", "origin", "spacing"),
    [((40, 48), (100, 7), (1.0, 1.0)), ((10, 24, 20), (3, 50, 0), (2.5, 1.0, 1.0))],
)
def test_segment_equals_clustering_of_the_whole_activated_maps(
    shape: tuple[int, ...], origin: tuple[int, ...], spacing: tuple[float, ...]
) -> None:
    ndim = len(shape)
    thresholds = ClusterThresholds(foreground=0.5, seed=0.9, min_object_size=3)
    for seed in range(3):
        raw = _raw(shape, seed)
        result = segment(
            raw, ndim, origin=origin, spacing=spacing, scale=64.0, thresholds=thresholds
        )
        full = raw.float()[None]
        activations = activate(full, ndim)
        embedding = embed(full[:, :ndim], origin=origin, spacing=spacing, scale=64.0)
        expected = find_instances(
            embedding[0].numpy(),
            activations.bandwidth[0].numpy(),
            activations.seed[0, 0].numpy(),
            foreground_threshold=0.5,
            seed_threshold=0.9,
            min_object_size=3,
        )
        assert len(expected) >= 3
        np.testing.assert_array_equal(result.labels, expected.labels)
        np.testing.assert_array_equal(result.seeds, expected.seeds)
        assert result.rejected == expected.rejected


def test_segment_respects_the_seed_mask() -> None:
    raw = _raw((40, 48), 0)
    thresholds = ClusterThresholds(foreground=0.5, seed=0.9)
    everywhere = segment(raw, 2, origin=(0, 0), spacing=(1, 1), scale=64.0, thresholds=thresholds)
    mask = np.zeros((40, 48), bool)
    mask[:, 12:] = True
    masked = segment(
        raw, 2, origin=(0, 0), spacing=(1, 1), scale=64.0, thresholds=thresholds, seed_mask=mask
    )
    assert len(masked) < len(everywhere)
    assert len(masked) > 0
    assert all(x >= 12 for x in masked.seeds[:, 1])


def test_find_instances_foreground_checks_its_shapes() -> None:
    with pytest.raises(ValueError, match="foreground pixels"):
        find_instances_foreground(
            (4, 4),
            np.array([0, 1]),
            np.zeros((2, 3), np.float32),
            np.ones(2, np.float32),
            np.ones((2, 2), np.float32),
        )


def test_segment_without_seed_candidates_finds_nothing() -> None:
    raw = _raw((40, 48), 0)
    thresholds = ClusterThresholds(foreground=0.5, seed=0.999)
    result = segment(raw, 2, origin=(0, 0), spacing=(1, 1), scale=64.0, thresholds=thresholds)
    assert result.labels.shape == (40, 48)
    assert result.labels.dtype == np.uint32
    assert not result.labels.any()
    assert result.seeds.shape == (0, 2)
