import numpy as np
import pytest

from embedseg_cli.data.centres import measure_objects
from embedseg_cli.data.properties import (
    crop_windows,
    derive_crop_size,
    extent_statistics,
    foreground_weight,
)


def test_crop_size_from_extents() -> None:
    assert derive_crop_size([21.0, 19.0], [3.0, 2.0]) == (40, 40)
    assert derive_crop_size([5.0, 30.0, 10.0], [0.5, 4.0, 1.0]) == (16, 56, 56)


def test_extent_statistics() -> None:
    labels = np.zeros((20, 20), np.uint32)
    labels[0:4, 0:2] = 1
    labels[10:12, 10:16] = 2
    mean, std, largest = extent_statistics([measure_objects(labels)], 2)
    assert mean == (3.0, 4.0)
    assert std == (1.0, 2.0)
    assert largest == (4, 6)


def test_foreground_weight_is_10_in_2d_and_the_background_ratio_in_3d() -> None:
    assert foreground_weight([1], [100], ndim=2) == 10.0
    assert foreground_weight([10, 25, 0], [110, 100, 50], ndim=3) == pytest.approx((10 + 3) / 2)


def test_crop_windows_stay_inside_the_image() -> None:
    centres = np.array([[2.0, 50.0], [98.0, 97.0], [40.0, 40.0]])
    starts = crop_windows(centres, (100, 100), (16, 16))
    assert starts.tolist() == [[0, 42], [84, 84], [32, 32]]


def test_images_smaller_than_the_crop_are_centred_in_a_padded_window() -> None:
    starts = crop_windows(np.array([[3.0, 10.0, 30.0]]), (6, 20, 64), (16, 32, 32))
    assert starts.tolist() == [[-5, -6, 14]]
