import numpy as np
import pytest

from embedseg_cli.data.diameters import (
    TrainingSize,
    comfortable,
    diameter_statistics,
    equivalent_diameters,
    interior_diameters,
    object_size_scale,
    training_size,
)
from embedseg_cli.records import DataProperties


def _disk(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_the_equivalent_diameter_of_a_disk_is_its_diameter() -> None:
    labels = np.zeros((64, 64), np.uint32)
    labels[_disk(labels.shape, (16, 16), 10)] = 1
    labels[_disk(labels.shape, (45, 45), 5)] = 2
    sizes = np.bincount(labels.ravel())[1:]
    assert equivalent_diameters(sizes, 2) == pytest.approx([20.0, 10.0], rel=0.05)


def test_a_ball_on_a_coarse_z_grid_has_the_diameter_of_the_same_ball_in_x_pixels() -> None:
    # A ball of radius 8 x pixels, sampled on z voxels twice as thick.
    z, y, x = np.indices((10, 20, 20))
    ball = (2 * z - 9) ** 2 + (y - 9.5) ** 2 + (x - 9.5) ** 2 <= 8**2
    (diameter,) = equivalent_diameters(np.array([ball.sum()]), 3, anisotropy=2.0)
    assert diameter == pytest.approx(16.0, rel=0.05)


def test_the_median_is_robust_to_one_merged_object() -> None:
    sizes = np.array([314, 314, 314, 314, 5000])
    median, quartiles = diameter_statistics(sizes, 2) or (0.0, (0.0, 0.0))
    assert median == pytest.approx(20.0, abs=0.01)
    assert quartiles == pytest.approx((20.0, 20.0), abs=0.01)
    assert diameter_statistics(np.zeros(0, np.int64), 3) is None


def test_objects_cut_by_the_border_are_left_out() -> None:
    labels = np.zeros((40, 40), np.uint32)
    labels[_disk(labels.shape, (20, 20), 6)] = 1
    labels[_disk(labels.shape, (0, 20), 6)] = 2  # half a disk
    assert interior_diameters(labels) == pytest.approx([12.0], rel=0.05)
    only_cut = np.where(labels == 2, 2, 0).astype(np.uint32)
    assert len(interior_diameters(only_cut)) == 1  # all touch: measured rather than none
    assert len(interior_diameters(np.zeros((8, 8), np.uint32))) == 0


def test_without_quartiles_objects_are_brought_to_within_15_percent_of_the_median() -> None:
    median = TrainingSize(20.0)
    assert object_size_scale(40.0, median).scale == pytest.approx(23.0 / 40.0)
    assert object_size_scale(10.0, median).scale == pytest.approx(20.0 / 1.15 / 10.0)
    assert object_size_scale(18.0, median).scale == 1.0  # wanted 1.11: not resampled
    tiny = object_size_scale(1.0, median)
    assert (tiny.scale, tiny.clamped) == (4.0, True)
    assert tiny.wanted == pytest.approx(20.0 / 1.15)
    assert not object_size_scale(40.0, median).clamped


def test_objects_outside_the_training_quartiles_are_brought_to_the_nearer_one() -> None:
    size = TrainingSize(20.0, (12.0, 28.0))
    assert [comfortable(d, size) for d in (11.9, 12.0, 20.0, 28.0, 28.1)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert object_size_scale(13.0, size).scale == 1.0
    assert object_size_scale(6.0, size).scale == 2.0
    assert object_size_scale(56.0, size).scale == 0.5
    # Quartiles narrower than the tolerance do not narrow it.
    assert comfortable(22.0, TrainingSize(20.0, (19.0, 21.0)))


def _props(**changes: object) -> DataProperties:
    values: dict[str, object] = {
        "ndim": 3,
        "channels": 1,
        "voxel_size": (2.0, 1.0, 1.0),
        "anisotropy": 2.0,
        "n_objects": 3,
        "min_object_size": 100,
        "mean_object_size": 400.0,
        "max_object_size": 900,
        "mean_extent": (5.0, 10.0, 20.0),
        "std_extent": (1.0, 1.0, 1.0),
        "max_extent": (8, 12, 24),
        "foreground_weight": 5.0,
        "crop_size": (16, 32, 32),
        "centre": "medoid",
    }
    return DataProperties.model_validate({**values, **changes})


def test_a_model_without_a_median_diameter_has_one_derived_from_its_extents() -> None:
    # z extents count at the anisotropy: (5 * 2) x 10 x 20 -> geometric mean 12.6.
    derived = training_size(_props())
    assert derived is not None
    assert (derived.median, derived.quartiles, derived.derived) == (
        pytest.approx(12.599, abs=1e-3),
        None,
        True,
    )
    measured = _props(median_diameter=11.0, diameter_quartiles=(8.0, 15.0))
    assert training_size(measured) == TrainingSize(11.0, (8.0, 15.0), derived=False)
    assert training_size(_props(n_objects=0, mean_extent=(0.0, 0.0, 0.0))) is None


def test_properties_written_before_the_median_diameter_still_read() -> None:
    stored = _props().model_dump(mode="json")
    del stored["median_diameter"], stored["diameter_quartiles"]
    assert DataProperties.model_validate(stored).median_diameter is None
