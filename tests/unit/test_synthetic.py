"""Tests of the synthetic cells: the properties the demo relies on, in 2D and 3D."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import regionprops

from embedseg_cli.data.synthetic import SyntheticImage, synthesise_dataset, synthesise_image


def _touching_pairs(labels: NDArray[Any]) -> set[tuple[int, int]]:
    """Pairs of different objects that share a face (4- or 6-connected neighbours)."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        both = (a > 0) & (b > 0) & (a != b)
        pairs |= {(int(min(x, y)), int(max(x, y))) for x, y in zip(a[both], b[both], strict=True)}
    return pairs


@pytest.fixture(scope="module")
def sample() -> SyntheticImage:
    return synthesise_image((128, 128), seed=7)


def test_image_and_labels_have_the_expected_types(sample: SyntheticImage) -> None:
    assert sample.image.shape == sample.labels.shape == (128, 128)
    assert sample.image.dtype == np.uint16
    assert sample.labels.dtype == np.uint32


def test_label_ids_are_consecutive_and_match_the_kinds(sample: SyntheticImage) -> None:
    ids = np.unique(sample.labels)
    n = len(sample.kinds)
    assert n >= 15
    assert ids.tolist() == list(range(n + 1))


def test_every_object_is_one_connected_piece(sample: SyntheticImage) -> None:
    for region in regionprops(sample.labels):
        assert ndimage.label(region.image)[1] == 1, region.label


def test_some_objects_touch(sample: SyntheticImage) -> None:
    assert len(_touching_pairs(sample.labels)) >= 3


def test_objects_are_not_all_disks(sample: SyntheticImage) -> None:
    regions = regionprops(sample.labels)
    solidity = np.array([r.solidity for r in regions])
    eccentricity = np.array([r.eccentricity for r in regions])
    # Crescents and bent rods are clearly non-convex; ellipses and rods are elongated.
    assert (solidity < 0.9).sum() >= 3
    assert (eccentricity > 0.8).sum() >= 3
    assert {"ellipse", "crescent", "rod", "lobed"} <= set(sample.kinds)


def test_crescents_and_rods_are_the_non_convex_ones(sample: SyntheticImage) -> None:
    solidity = {r.label: r.solidity for r in regionprops(sample.labels)}
    ellipses = [solidity[i + 1] for i, k in enumerate(sample.kinds) if k == "ellipse"]
    crescents = [solidity[i + 1] for i, k in enumerate(sample.kinds) if k == "crescent"]
    assert np.median(crescents) < 0.85 < np.median(ellipses)


def test_sizes_vary(sample: SyntheticImage) -> None:
    areas = np.bincount(sample.labels.ravel())[1:]
    assert areas.max() > 3 * areas.min()


def test_objects_are_brighter_than_the_background(sample: SyntheticImage) -> None:
    image = sample.image.astype(np.float64)
    foreground = sample.labels > 0
    assert image[foreground].mean() > image[~foreground].mean() + 50


def test_the_background_is_uneven() -> None:
    empty = synthesise_image((128, 128), seed=11, coverage=0.0)
    assert not empty.labels.any()
    image = empty.image.astype(np.float64)
    quadrants = [image[:64, :64], image[:64, 64:], image[64:, :64], image[64:, 64:]]
    means = [q.mean() for q in quadrants]
    noise_of_a_mean = image.std() / 64
    # A flat background would give quadrant means within a few noise_of_a_mean of each other.
    assert max(means) - min(means) > 20 * noise_of_a_mean


def test_the_same_seed_gives_the_same_image() -> None:
    a = synthesise_image((48, 48), seed=3)
    b = synthesise_image((48, 48), seed=3)
    c = synthesise_image((48, 48), seed=4)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.labels, b.labels)
    assert a.kinds == b.kinds
    assert not np.array_equal(a.labels, c.labels)


def test_a_data_set_starts_with_the_images_of_a_smaller_one() -> None:
    small = synthesise_dataset(1, (40, 40), seed=5)
    large = synthesise_dataset(3, (40, 40), seed=5)
    assert len(large) == 3
    assert np.array_equal(small[0].labels, large[0].labels)
    assert not np.array_equal(large[0].labels, large[1].labels)


def test_volumes_have_touching_non_convex_objects() -> None:
    volume = synthesise_image((32, 64, 64), seed=2, size=(4.0, 7.0))
    assert volume.image.shape == volume.labels.shape == (32, 64, 64)
    assert volume.image.dtype == np.uint16
    assert volume.labels.dtype == np.uint32
    n = len(volume.kinds)
    assert np.unique(volume.labels).tolist() == list(range(n + 1))
    assert n >= 10
    assert len(_touching_pairs(volume.labels)) >= 2
    solidity = np.array([r.solidity for r in regionprops(volume.labels)])
    assert (solidity < 0.9).sum() >= 2


def test_other_dimensionalities_are_refused() -> None:
    with pytest.raises(ValueError, match="shape must be"):
        synthesise_image((64,))
