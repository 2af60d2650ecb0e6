"""Fine-tuning warns where the store's voxel or object size differ from the model's data."""

from typing import Any

from embedseg_cli.records import DataProperties
from embedseg_cli.train.start import size_differences


def _props(voxel_size: tuple[float, ...], mean_extent: tuple[float, ...]) -> DataProperties:
    ndim = len(voxel_size)
    values: dict[str, Any] = {
        "ndim": ndim,
        "channels": 1,
        "voxel_size": voxel_size,
        "anisotropy": voxel_size[0] / voxel_size[-1],
        "n_objects": 10,
        "min_object_size": 20,
        "mean_object_size": 300.0,
        "max_object_size": 900,
        "mean_extent": mean_extent,
        "std_extent": (2.0,) * ndim,
        "max_extent": (40,) * ndim,
        "foreground_weight": 10.0,
        "crop_size": (64,) * ndim,
        "centre": "medoid",
    }
    return DataProperties(**values)


def test_the_same_sizes_give_no_warning() -> None:
    model = _props((1.0, 1.0), (20.0, 20.0))
    assert size_differences(model, _props((1.0, 1.0), (22.0, 18.0)), "M", "P.zarr") == []


def test_another_voxel_size_names_both_and_the_options_of_prepare() -> None:
    model = _props((1.0, 1.0), (20.0, 20.0))
    (line,) = size_differences(model, _props((0.65, 0.65), (20.0, 20.0)), "M", "P.zarr")
    assert "M was trained on images of voxel size 1 x 1 and P.zarr holds 0.65 x 0.65" in line
    assert "--voxel-size" in line
    assert "--downsample" in line


def test_larger_objects_suggest_the_factor_that_brings_them_to_the_models_size() -> None:
    model = _props((2.0, 1.0, 1.0), (10.0, 20.0, 20.0))
    (line,) = size_differences(model, _props((2.0, 1.0, 1.0), (10.0, 61.0, 59.0)), "M", "P")
    assert "mean extent 10 x 61 x 59 pixels, against 10 x 20 x 20" in line
    assert "--downsample 1x3x3" in line


def test_smaller_objects_are_told_without_a_downsampling_factor() -> None:
    model = _props((1.0, 1.0), (20.0, 20.0))
    (line,) = size_differences(model, _props((1.0, 1.0), (8.0, 8.0)), "M", "P.zarr")
    assert "objects in P.zarr are 0.4x the size of those M was trained on" in line
    assert "--downsample" not in line
