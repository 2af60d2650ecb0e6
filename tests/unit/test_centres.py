import tracemalloc

import numpy as np
import pytest

from embedseg_cli.data.centres import (
    approximate_medoid_index,
    mean_distances,
    measure_objects,
    medoid_index,
)


def _points(mask: np.ndarray) -> np.ndarray:
    return np.stack(np.nonzero(mask), axis=1).astype(np.float64)


def _l_shape() -> np.ndarray:
    mask = np.zeros((80, 80), bool)
    mask[5:75, 5:15] = True
    mask[65:75, 5:75] = True
    return mask


def _ring_segment() -> np.ndarray:
    yy, xx = np.mgrid[-60:61, -60:61]
    radius = np.hypot(yy, xx)
    angle = np.arctan2(yy, xx)
    return (radius > 40) & (radius < 55) & (angle > -2.0) & (angle < 1.2)


def _crescent() -> np.ndarray:
    yy, xx = np.mgrid[-60:61, -60:61]
    return (np.hypot(yy, xx) < 55) & (np.hypot(yy, xx - 20) > 48)


SHAPES = {"L": _l_shape, "ring segment": _ring_segment, "crescent": _crescent}


def test_exact_medoid_minimises_the_mean_distance() -> None:
    points = _points(_crescent()[::4, ::4])
    index = medoid_index(points, exact_max_points=10_000)
    assert index == int(np.argmin([np.linalg.norm(points - p, axis=1).mean() for p in points]))


@pytest.mark.parametrize("shape", SHAPES)
def test_approximate_medoid_is_within_one_percent_of_the_exact(shape: str) -> None:
    points = _points(SHAPES[shape]())
    assert len(points) > 1000
    costs = mean_distances(points, points)
    approximate = medoid_index(points, exact_max_points=0, sample_size=256)
    assert costs[approximate] <= 1.01 * costs.min()
    # On these shapes the centroid is a poor centre: farther from the object on average
    # (or outside it), which is why the medoid is the default.
    centroid = points.mean(axis=0)
    centroid_cost = np.linalg.norm(points - centroid, axis=1).mean()
    assert (
        not SHAPES[shape]()[tuple(np.round(centroid).astype(int))]
        or centroid_cost > 1.01 * costs.min()
    )


@pytest.mark.parametrize("shape", ["ring segment", "crescent"])
def test_centroid_falls_outside_non_convex_objects_but_medoid_does_not(shape: str) -> None:
    mask = SHAPES[shape]()
    labels = mask.astype(np.uint32)
    centroid = measure_objects(labels, centre="centroid").centres[0]
    medoid = measure_objects(labels, centre="medoid").centres[0]
    assert not mask[tuple(np.round(centroid).astype(int))]
    assert mask[tuple(medoid.astype(int))]


def test_large_medoid_uses_little_memory() -> None:
    yy, xx = np.mgrid[-60:61, -60:61]
    points = _points(np.hypot(yy, xx) < 59.9)
    assert len(points) > 11_000
    tracemalloc.start()
    medoid_index(points)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6


def test_approximate_medoid_takes_the_pixel_nearest_the_median() -> None:
    points = np.array([[0, 0], [10, 0], [0, 10], [4, 4], [10, 10]], dtype=float)
    assert approximate_medoid_index(points) == 3


def test_measure_objects_on_three_disks() -> None:
    labels = np.zeros((32, 32), np.uint32)
    yy, xx = np.mgrid[:32, :32]
    for value, (cy, cx) in zip((2, 5, 9), ((6, 6), (16, 24), (25, 8)), strict=True):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = value
    table = measure_objects(labels)
    assert table.labels.tolist() == [2, 5, 9]
    assert table.sizes.tolist() == [29, 29, 29]
    assert table.centres.tolist() == [[6, 6], [16, 24], [25, 8]]
    assert table.bbox_start.tolist() == [[3, 3], [13, 21], [22, 5]]
    assert table.extents.tolist() == [[7, 7]] * 3


def test_medoid_is_measured_in_physical_units() -> None:
    # A plus-shaped object: a long arm along z and a long arm along x. With isotropic voxels
    # the medoid sits at the crossing; with a large z spacing the z arm dominates the
    # distances and pulls the medoid along it.
    labels = np.zeros((21, 3, 9), np.uint32)
    labels[:, 1, 4] = 1
    labels[16, 1, :] = 1
    iso = measure_objects(labels, spacing=(1.0, 1.0, 1.0)).centres[0]
    aniso = measure_objects(labels, spacing=(5.0, 1.0, 1.0)).centres[0]
    points = _points(labels > 0)
    for spacing, found in (((1.0, 1.0, 1.0), iso), ((5.0, 1.0, 1.0), aniso)):
        physical = points * spacing
        best = points[np.argmin(mean_distances(physical, physical))]
        assert found.tolist() == best.tolist()
    assert iso.tolist() != aniso.tolist()


def test_centres_are_computed_on_the_whole_object_in_3d() -> None:
    labels = np.zeros((16, 32, 32), np.uint32)
    zz, yy, xx = np.mgrid[:16, :32, :32]
    labels[(zz - 8) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 16] = 1
    labels[(zz - 7) ** 2 + (yy - 22) ** 2 + (xx - 21) ** 2 <= 25] = 2
    for method in ("medoid", "approximate-medoid", "centroid"):
        table = measure_objects(labels, centre=method)  # type: ignore[arg-type]
        assert np.allclose(table.centres, [[8, 10, 10], [7, 22, 21]])


def test_empty_labels_give_an_empty_table() -> None:
    table = measure_objects(np.zeros((8, 8), np.uint16))
    assert len(table) == 0
    assert table.centres.shape == (0, 2)


def test_spacing_must_match_the_dimensions() -> None:
    with pytest.raises(ValueError, match="one value per axis"):
        measure_objects(np.ones((4, 4), np.uint8), spacing=(1.0, 1.0, 1.0))
