"""The shared primitives of data/: normalisation, label checks, channels first."""

import dask.array as da
import numpy as np
import pytest

from embedseg_cli.data.channels import channels_first
from embedseg_cli.data.labels import as_labels
from embedseg_cli.data.normalise import intensity_percentiles, normalise
from embedseg_cli.errors import InputError


def test_percentiles_per_channel() -> None:
    image = np.stack([np.arange(1001.0), 10 * np.arange(1001.0)], axis=-1)
    pairs = intensity_percentiles(image, channel_axis=-1, percentiles=(1, 99.8))
    assert np.allclose(pairs, [(10.0, 998.0), (100.0, 9980.0)])


def test_percentiles_ignore_non_finite_values() -> None:
    image = np.array([np.nan, 1.0, 3.0, np.inf, -np.inf])
    assert intensity_percentiles(image, channel_axis=None, percentiles=(0, 100)) == ((1.0, 3.0),)
    with pytest.raises(ValueError, match="no finite"):
        intensity_percentiles(np.full(3, np.nan), channel_axis=None)


def test_normalise_per_channel() -> None:
    image = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 100.0)], axis=-1)
    out = normalise(image, ((0.0, 20.0), (50.0, 150.0)), channel_axis=-1)
    assert out.dtype == np.float32
    assert np.allclose(out[..., 0], 0.5)
    assert np.allclose(out[..., 1], 0.5)


def test_normalise_matches_bioimageio_scale_range() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (16, 16))
    low, high = np.percentile(image, [1.0, 99.8])
    expected = (image - low) / (high - low + 1e-6)
    out = normalise(image, ((float(low), float(high)),), channel_axis=None)
    assert np.allclose(out, expected, atol=1e-6)


def test_normalise_makes_non_finite_values_background() -> None:
    out = normalise(np.array([np.nan, np.inf, 5.0]), ((0.0, 10.0),), channel_axis=None)
    assert out.tolist()[:2] == [0.0, 0.0]
    assert out[2] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((4, 4), np.float32), "float32 values"),
        (np.zeros((4, 4), bool), "bool values"),
        (np.full((4, 4), -1, np.int16), "negative labels"),
        (np.full((4, 4), 2**33, np.int64), "above 2\\*\\*32 - 1"),
        (np.zeros((2, 2, 2, 2), np.uint8), "shape \\(2, 2, 2, 2\\): labels must be 2D or 3D"),
        (np.zeros(5, np.uint8), "shape \\(5,\\)"),
    ],
)
def test_labels_refused_with_the_reason(data: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        as_labels(data, "mask m.tif")


def test_labels_keep_their_spatial_axes() -> None:
    assert as_labels(np.ones((1, 1), np.uint8), "m").shape == (1, 1)
    assert as_labels(np.ones((1, 1, 3, 4), np.int32), "m").shape == (3, 4)
    assert as_labels(np.ones((1, 2, 3, 4), np.int32), "m").shape == (2, 3, 4)
    assert as_labels(np.ones((1, 3, 4), np.int32), "m", ndim=3).shape == (1, 3, 4)
    assert as_labels(np.ones((2, 2), np.int64), "m").dtype == np.uint32


def test_channels_first_numpy_and_dask_agree() -> None:
    image = np.arange(2 * 3 * 4 * 5).reshape(3, 4, 5, 2)
    expected = np.moveaxis(image, -1, 0)
    out = channels_first(image, "ZYXC", ndim=3, channels=2, where="x", fix="")
    lazy = channels_first(da.from_array(image), "ZYXC", ndim=3, channels=2, where="x", fix="")
    assert isinstance(lazy, da.Array)
    assert np.array_equal(out, expected)
    assert np.array_equal(lazy.compute(), expected)


def test_channels_first_drops_a_time_axis_and_adds_a_channel() -> None:
    image = np.zeros((1, 6, 7), np.uint16)
    assert channels_first(image, "TYX", ndim=2, channels=1, where="x", fix="").shape == (1, 6, 7)


@pytest.mark.parametrize(
    ("shape", "axes", "dtype", "message"),
    [
        ((6, 7), "YX", np.uint16, "axes YX and shape \\(6, 7\\) but the model takes 3D images"),
        ((6, 7, 3), "YXC", np.uint16, "with 1 channel\\(s\\): use another model"),
        ((6, 7), "YX", bool, "holds bool values"),
    ],
)
def test_channels_first_refuses_what_does_not_fit(
    shape: tuple[int, ...], axes: str, dtype: type, message: str
) -> None:
    ndim = 3 if message.endswith("3D images") else 2
    with pytest.raises(InputError, match=message):
        channels_first(
            np.zeros(shape, dtype), axes, ndim=ndim, channels=1, where="x", fix="use another model"
        )
