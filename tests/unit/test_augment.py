import numpy as np
import pytest

from embedseg_cli.data.augment import apply_transform, transform_points, transforms


@pytest.mark.parametrize(("ndim", "shape"), [(2, (5, 7)), (3, (3, 5, 7))])
def test_points_follow_their_pixels(ndim: int, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    points = np.stack([rng.integers(0, s, 10) for s in shape], axis=1).astype(float)
    for transform in transforms(ndim):
        for point in points:
            marker = np.zeros(shape, np.uint8)
            marker[tuple(point.astype(int))] = 1
            moved = apply_transform(marker, transform, ndim)
            expected = np.argwhere(moved)[0]
            found = transform_points(point[None], shape, transform)[0]
            assert found.tolist() == expected.tolist()


@pytest.mark.parametrize("ndim", [2, 3])
def test_transforms_are_distinct_and_keep_z(ndim: int) -> None:
    shape = (4, 5, 6)[-ndim:]
    array = np.arange(np.prod(shape)).reshape(shape)
    seen = {
        apply_transform(array, t, ndim).tobytes()
        + bytes(str(apply_transform(array, t, ndim).shape), "ascii")
        for t in transforms(ndim)
    }
    assert len(seen) == len(transforms(ndim))
    if ndim == 3:
        for t in transforms(3):
            assert apply_transform(array, t, 3).shape[0] == 4


def test_leading_channel_axes_are_left_alone() -> None:
    image = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for t in transforms(2):
        out = apply_transform(image, t, 2)
        assert out.shape[0] == 2
        assert np.array_equal(out[1], apply_transform(image[1], t, 2))
