import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from embedseg_cli.method import cells
from embedseg_cli.method.clustering import cluster_seeds, find_instances

LN2 = math.log(2.0)


def reference_labels(
    embedding: np.ndarray,
    bandwidth: np.ndarray,
    seed: np.ndarray,
    *,
    foreground_threshold: float = 0.5,
    seed_threshold: float = 0.9,
    membership_threshold: float = 0.5,
    min_object_size: int = 0,
    min_unclustered_fraction: float = 0.5,
    seed_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int]]:
    """The greedy clustering written from its definition: O(seeds x foreground).

    Returns the label image and the flat index of the seed of each instance.
    """
    ndim = seed.ndim
    flat_seed = seed.reshape(-1)
    fg = np.flatnonzero(flat_seed > np.float32(foreground_threshold))
    emb = embedding.reshape(ndim, -1)[:, fg].astype(np.float64)
    bw = bandwidth.reshape(ndim, -1)[:, fg].astype(np.float64)
    score = flat_seed[fg]
    may_seed = np.ones(len(fg), bool) if seed_mask is None else seed_mask.reshape(-1)[fg]
    unclustered = np.ones(len(fg), bool)
    labels = np.zeros(len(fg), np.uint32)
    seeds: list[int] = []
    while True:
        available = unclustered & may_seed
        if not available.any():
            break
        i = int(np.argmax(np.where(available, score, -np.inf)))  # first maximum
        if score[i] < np.float32(seed_threshold):
            break
        unclustered[i] = False
        distance = np.zeros(len(fg))
        for k in range(ndim):
            distance = distance + bw[k, i] * (emb[k] - emb[k, i]) ** 2
        proposal = np.exp(-distance) > membership_threshold
        size = int(proposal.sum())
        if size > min_object_size and unclustered[proposal].sum() / size > min_unclustered_fraction:
            labels[proposal & (labels == 0)] = len(seeds) + 1
            seeds.append(int(fg[i]))
        unclustered[proposal] = False
    out = np.zeros(seed.size, np.uint32)
    out[fg] = labels
    return out.reshape(seed.shape), seeds


def random_outputs(
    rng: np.random.Generator, shape: tuple[int, ...], n_centres: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Messy network outputs: close, noisy clusters, varied bandwidths, many seeds."""
    ndim = len(shape)
    scale = 16.0
    grid = np.indices(shape).reshape(ndim, -1).T.astype(np.float64)
    centres = rng.uniform(0, shape, size=(n_centres, ndim))
    nearest = np.argmin(((grid[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    points = centres[nearest] + rng.normal(0, 2.5, size=grid.shape)
    # A few pixels embed far from their cluster and far from anything.
    points[rng.random(len(grid)) < 0.02] *= 3
    embedding = (points.T / scale).reshape(ndim, *shape).astype(np.float32)
    radius_px = rng.uniform(1.0, 6.0, size=(ndim, len(grid)))
    radius_px[:, rng.random(len(grid)) < 0.03] *= 12  # supports much wider than a cell
    bandwidth = LN2 / (radius_px / scale) ** 2
    bandwidth[:, rng.random(len(grid)) < 0.01] = 0.0  # unbounded along that axis
    bandwidth = bandwidth.reshape(ndim, *shape).astype(np.float32)
    seed = rng.random(shape).astype(np.float32)
    return embedding, bandwidth, seed


def network_output(
    shape: tuple[int, ...],
    objects: Sequence[tuple[tuple[float, ...], float]],
    rng: np.random.Generator,
    noise_px: float = 0.5,
    scale: float = 1024.0,
    margin_px: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a trained network predicts for disks or balls: embedding, bandwidth, seed, truth.

    Offsets point at the object centre (plus noise), the membership is 0.5 at ``margin_px``
    and the seed is 1 at the centre and 0.55 at the boundary, 0 in the background.
    """
    ndim = len(shape)
    grid = np.indices(shape).astype(np.float64)
    truth = np.zeros(shape, np.uint32)
    offsets = rng.normal(0, noise_px, size=(ndim, *shape))
    seed = np.zeros(shape, np.float32)
    for label, (centre, radius) in enumerate(objects, start=1):
        d2 = sum((grid[k] - centre[k]) ** 2 for k in range(ndim))
        inside = d2 <= radius**2
        truth[inside] = label
        for k in range(ndim):
            offsets[k][inside] += centre[k] - grid[k][inside]
        seed[inside] = 1.0 - 0.45 * d2[inside] / radius**2
    embedding = ((grid + offsets) / scale).astype(np.float32)
    bandwidth = np.full((ndim, *shape), LN2 / (margin_px / scale) ** 2, np.float32)
    return embedding, bandwidth, seed, truth


def matched_ious(truth: np.ndarray, labels: np.ndarray) -> dict[int, tuple[int, float]]:
    """For each true object: the predicted label overlapping it most, and their IoU."""
    out = {}
    for value in np.unique(truth[truth > 0]):
        obj = truth == value
        found, counts = np.unique(labels[obj], return_counts=True)
        best = int(found[np.argmax(np.where(found > 0, counts, -1))])
        pred = labels == best
        out[int(value)] = (best, float((obj & pred).sum() / (obj | pred).sum()))
    return out


THREE_DISKS = [((8.0, 8.0), 6.0), ((8.0, 21.0), 6.0), ((22.0, 15.0), 5.0)]
TWO_BALLS = [((8.0, 9.0, 9.0), 5.0), ((8.0, 21.0, 21.0), 6.0)]

SETTINGS = [
    {},
    {"min_object_size": 6},
    {"min_unclustered_fraction": 0.3, "membership_threshold": 0.3},
    {"foreground_threshold": 0.3, "seed_threshold": 0.8, "membership_threshold": 0.7},
    {"seed_mask": "random"},
]


@pytest.mark.parametrize("shape", [(40, 48), (10, 20, 24)], ids=["2d", "3d"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "defaults")
@pytest.mark.parametrize("trial", range(3))
def test_equals_the_reference_on_messy_outputs(
    shape: tuple[int, ...], settings: dict[str, object], trial: int
) -> None:
    rng = np.random.default_rng(100 * trial + len(shape))
    embedding, bandwidth, seed = random_outputs(rng, shape, n_centres=8)
    kwargs = dict(settings)
    if kwargs.get("seed_mask") == "random":
        kwargs["seed_mask"] = rng.random(shape) < 0.5
    expected, expected_seeds = reference_labels(embedding, bandwidth, seed, **kwargs)  # type: ignore[arg-type]
    result = find_instances(embedding, bandwidth, seed, **kwargs)  # type: ignore[arg-type]
    assert expected.max() >= 3  # the case is not trivial
    np.testing.assert_array_equal(result.labels, expected)
    seeds = np.ravel_multi_index(tuple(result.seeds.T), shape)
    assert seeds.tolist() == expected_seeds


@pytest.mark.parametrize(
    "knobs",
    [
        {"_CELL_QUANTILE": 0.02},  # most seeds reach many cells
        {"_CELLS_PER_PIXEL": 0.01},  # coarse grid
        {"_ROWS_PER_PIXEL": 10**9, "_MIN_ROW_LIMIT": 0},  # every seed tests all pixels
    ],
    ids=["small-cells", "few-cells", "brute-force"],
)
@pytest.mark.parametrize("shape", [(40, 48), (10, 20, 24)], ids=["2d", "3d"])
def test_every_search_path_equals_the_reference(
    monkeypatch: pytest.MonkeyPatch, knobs: dict[str, float], shape: tuple[int, ...]
) -> None:
    for name, value in knobs.items():
        monkeypatch.setattr(cells, name, value)
    rng = np.random.default_rng(7)
    embedding, bandwidth, seed = random_outputs(rng, shape, n_centres=8)
    expected, _ = reference_labels(embedding, bandwidth, seed, min_object_size=3)
    labels = cluster_seeds(embedding, bandwidth, seed, min_object_size=3)
    np.testing.assert_array_equal(labels, expected)


def test_a_pixel_keeps_the_label_of_the_first_instance() -> None:
    # One row: A at 0.0 (seeds 0.99), shared pixels at 0.02, B at 0.04. Both Gaussians
    # (radius 0.025) reach the shared pixels; the original gave them to B.
    x = [0.0, 0.0, 0.0, 0.02, 0.02, 0.04, 0.04, 0.04, 0.04, 0.04]
    embedding = np.zeros((2, 1, len(x)), np.float32)
    embedding[1, 0] = x
    bandwidth = np.full_like(embedding, LN2 / 0.025**2)
    seed = np.array([[0.99, 0.7, 0.7, 0.7, 0.7, 0.95, 0.7, 0.7, 0.7, 0.7]], np.float32)
    labels = cluster_seeds(embedding, bandwidth, seed)
    assert labels.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2, 2, 2]]


def test_the_seed_pixel_counts_as_clustered_in_the_fraction() -> None:
    # A proposal of 2 pixels has 1 unclustered pixel besides its seed: 1/2 is not > 1/2.
    embedding = np.zeros((2, 1, 4), np.float32)
    embedding[1, 0] = [0.0, 0.0, 1.0, 1.0]
    bandwidth = np.full_like(embedding, 1000.0)
    seed = np.array([[0.95, 0.7, 0.95, 0.7]], np.float32)
    result = find_instances(embedding, bandwidth, seed)
    assert result.labels.max() == 0
    assert result.rejected == 2
    labels = cluster_seeds(embedding, bandwidth, seed, min_unclustered_fraction=0.49)
    assert labels.tolist() == [[1, 1, 2, 2]]


def test_recovers_three_disks() -> None:
    rng = np.random.default_rng(0)
    embedding, bandwidth, seed, truth = network_output((32, 32), THREE_DISKS, rng)
    labels = cluster_seeds(embedding, bandwidth, seed, min_object_size=10)
    assert labels.max() == 3
    matches = matched_ious(truth, labels)
    assert all(iou >= 0.95 for _, iou in matches.values()), matches
    assert len({best for best, _ in matches.values()}) == 3


def test_recovers_two_balls_once_each_despite_many_seeds() -> None:
    rng = np.random.default_rng(1)
    embedding, bandwidth, seed, truth = network_output((16, 32, 32), TWO_BALLS, rng)
    assert (seed >= 0.9).sum() > 50  # many pixels could start an instance
    result = find_instances(embedding, bandwidth, seed)
    assert len(result) == 2
    assert result.labels.max() == 2
    matches = matched_ious(truth, result.labels)
    assert sorted(best for best, _ in matches.values()) == [1, 2]
    assert min(iou for _, iou in matches.values()) >= 0.95
    # Each instance starts at its ball's highest seed, the centre.
    assert result.seeds.tolist() == [[8, 9, 9], [8, 21, 21]]
    for label, position in enumerate(result.seeds, start=1):
        assert result.labels[tuple(position)] == label


def test_foreground_threshold_is_honoured() -> None:
    rng = np.random.default_rng(2)
    embedding, bandwidth, seed, _ = network_output((32, 32), THREE_DISKS, rng)
    low = cluster_seeds(embedding, bandwidth, seed, foreground_threshold=0.5)
    high = cluster_seeds(embedding, bandwidth, seed, foreground_threshold=0.8)
    assert ((low > 0) == (seed > 0.5)).all()
    assert ((high > 0) == (seed > np.float32(0.8))).all()
    assert (high > 0).sum() < (low > 0).sum()


def test_seed_threshold_ends_the_loop() -> None:
    rng = np.random.default_rng(3)
    embedding, bandwidth, seed, truth = network_output((32, 32), THREE_DISKS, rng)
    seed[truth == 2] *= 0.89  # object 2 peaks at 0.89 now
    assert cluster_seeds(embedding, bandwidth, seed).max() == 2
    assert cluster_seeds(embedding, bandwidth, seed, seed_threshold=0.85).max() == 3
    assert cluster_seeds(embedding, bandwidth, seed, seed_threshold=1.01).max() == 0


def test_min_object_size_is_strict() -> None:
    rng = np.random.default_rng(4)
    embedding, bandwidth, seed, truth = network_output((32, 32), THREE_DISKS, rng)
    smallest = int(np.bincount(truth.ravel())[1:].min())
    kept = cluster_seeds(embedding, bandwidth, seed, min_object_size=smallest - 1)
    dropped = cluster_seeds(embedding, bandwidth, seed, min_object_size=smallest)
    assert kept.max() == 3
    assert dropped.max() == 2


def test_seed_mask_only_restricts_where_instances_start() -> None:
    rng = np.random.default_rng(5)
    embedding, bandwidth, seed, truth = network_output((32, 32), THREE_DISKS, rng)
    mask = np.zeros((32, 32), bool)
    mask[:, 15:] = True  # holds the centres of objects 2 and 3, nothing of object 1
    result = find_instances(embedding, bandwidth, seed, seed_mask=mask)
    assert all(mask[tuple(p)] for p in result.seeds)
    assert result.labels.max() == 2
    assert not result.labels[truth == 1].any()
    # Object 3 extends outside the mask, and so does its instance.
    assert (result.labels[truth == 3] > 0).all()
    assert (result.labels[:, :15] > 0).any()
    expected, _ = reference_labels(embedding, bandwidth, seed, seed_mask=mask)
    np.testing.assert_array_equal(result.labels, expected)


def test_labels_are_uint32_and_deterministic() -> None:
    rng = np.random.default_rng(6)
    embedding, bandwidth, seed = random_outputs(rng, (40, 48), n_centres=8)
    first = cluster_seeds(embedding, bandwidth, seed)
    second = cluster_seeds(embedding.copy(), bandwidth.copy(), seed.copy())
    assert first.dtype == np.uint32
    assert first.shape == seed.shape
    np.testing.assert_array_equal(first, second)


def test_ties_go_to_the_lowest_flat_index() -> None:
    embedding = np.zeros((2, 2, 3), np.float32)
    embedding[1, 1] = 1.0  # the second row embeds elsewhere
    bandwidth = np.full_like(embedding, 1000.0)
    seed = np.full((2, 3), 0.95, np.float32)
    result = find_instances(embedding, bandwidth, seed)
    assert result.seeds.tolist() == [[0, 0], [1, 0]]
    assert result.labels.tolist() == [[1, 1, 1], [2, 2, 2]]


@pytest.mark.parametrize("shape", [(40, 48), (10, 20, 24)], ids=["2d", "3d"])
def test_torch_cpu_gives_the_numpy_result(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(8)
    embedding, bandwidth, seed = random_outputs(rng, shape, n_centres=8)
    mask = rng.random(shape) < 0.7
    kwargs = {"min_object_size": 2, "seed_mask": mask}
    expected = find_instances(embedding, bandwidth, seed, **kwargs)  # type: ignore[arg-type]
    tensors = [torch.from_numpy(a) for a in (embedding, bandwidth, seed)]
    result = find_instances(*tensors, min_object_size=2, seed_mask=torch.from_numpy(mask))
    assert isinstance(result.labels, np.ndarray)
    assert result.labels.dtype == np.uint32
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.seeds, expected.seeds)
    assert result.rejected == expected.rejected


def test_a_tensor_among_arrays_takes_the_torch_path() -> None:
    rng = np.random.default_rng(10)
    embedding, bandwidth, seed = random_outputs(rng, (40, 48), n_centres=8)
    mask = rng.random((40, 48)) < 0.7
    expected = cluster_seeds(embedding, bandwidth, seed, seed_mask=mask)
    labels = cluster_seeds(embedding, bandwidth, seed, seed_mask=torch.from_numpy(mask))
    np.testing.assert_array_equal(labels, expected)
    labels = cluster_seeds(embedding, bandwidth, torch.from_numpy(seed), seed_mask=mask)
    np.testing.assert_array_equal(labels, expected)


def test_half_precision_tensors_are_clustered_exactly() -> None:
    rng = np.random.default_rng(11)
    embedding, bandwidth, seed = random_outputs(rng, (40, 48), n_centres=8)
    halves = [torch.from_numpy(a).to(torch.bfloat16) for a in (embedding, bandwidth, seed)]
    as_float = [t.float().numpy() for t in halves]
    # Thresholds are compared in the seed's dtype: use ones that bfloat16 represents.
    expected, _ = reference_labels(*as_float, seed_threshold=0.875)
    np.testing.assert_array_equal(cluster_seeds(*halves, seed_threshold=0.875), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_numpy_result() -> None:
    rng = np.random.default_rng(9)
    embedding, bandwidth, seed = random_outputs(rng, (10, 20, 24), n_centres=8)
    expected = cluster_seeds(embedding, bandwidth, seed, min_object_size=2)
    tensors = [torch.from_numpy(a).cuda() for a in (embedding, bandwidth, seed)]
    labels = cluster_seeds(*tensors, min_object_size=2)
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("shape", [(32, 32), (16, 32, 32)], ids=["2d", "3d"])
def test_empty_foreground_gives_zeros(shape: tuple[int, ...]) -> None:
    ndim = len(shape)
    embedding = np.zeros((ndim, *shape), np.float32)
    result = find_instances(embedding, np.ones_like(embedding), np.full(shape, 0.4, np.float32))
    assert result.labels.dtype == np.uint32
    assert not result.labels.any()
    assert result.seeds.shape == (0, ndim)


def test_foreground_without_seeds_gives_zeros() -> None:
    embedding = np.zeros((2, 8, 8), np.float32)
    labels = cluster_seeds(embedding, np.ones_like(embedding), np.full((8, 8), 0.8, np.float32))
    assert not labels.any()


def _inputs() -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    embedding = np.zeros((2, 4, 4), np.float32)
    return embedding, np.ones_like(embedding), np.full((4, 4), 0.95, np.float32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"membership_threshold": 1.0}, "membership_threshold"),
        ({"min_unclustered_fraction": 1.5}, "min_unclustered_fraction"),
        ({"min_object_size": -1}, "min_object_size"),
        ({"seed_mask": np.ones((4, 5), bool)}, "seed_mask"),
    ],
)
def test_bad_arguments_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_seeds(*_inputs(), **change)  # type: ignore[arg-type]


def test_inconsistent_shapes_are_refused() -> None:
    embedding, bandwidth, seed = _inputs()
    with pytest.raises(ValueError, match=r"\(ndim, \*spatial\)"):
        cluster_seeds(embedding[:1], bandwidth[:1], seed)
    with pytest.raises(ValueError, match="bandwidth"):
        cluster_seeds(embedding, bandwidth[:, :3], seed)


def test_non_finite_values_are_refused() -> None:
    embedding, bandwidth, seed = _inputs()
    embedding[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="embedding is not finite"):
        cluster_seeds(embedding, bandwidth, seed)
    embedding, bandwidth, seed = _inputs()
    bandwidth[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="bandwidth"):
        cluster_seeds(embedding, bandwidth, seed)
    embedding, bandwidth, seed = _inputs()
    bandwidth[1, 2, 2] = -1.0
    with pytest.raises(ValueError, match="bandwidth"):
        cluster_seeds(embedding, bandwidth, seed)


def test_a_seed_of_infinite_bandwidth_claims_nothing() -> None:
    # exp(10 * sigma) overflows float32 for sigma above ~8.9, as it can early in training:
    # such a seed is a Gaussian of zero width, rejected, and the next seed takes the pixels.
    embedding, bandwidth, seed = _inputs()
    seed[0, 0] = 0.99
    bandwidth[:, 0, 0] = np.inf
    result = find_instances(embedding, bandwidth, seed)
    assert result.rejected == 1
    assert result.seeds.tolist() == [[0, 1]]
    assert (result.labels == 1).all(), "a rejected seed's pixel can still join another instance"
