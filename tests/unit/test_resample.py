"""Resampling: pieces join without seams, downsampled images are anti-aliased, labels exact."""

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import rescale

from embedseg_cli.blockwise.resample import resample_piece, source_range
from embedseg_cli.predict.resample import resample


def _whole(array: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    ndim = len(shape)
    factors = tuple(n / m for n, m in zip(array.shape[-ndim:], shape, strict=True))
    origin = (0,) * ndim
    return resample_piece(array, origin, shape, origin, factors, order)


def _piecewise(
    array: np.ndarray, shape: tuple[int, ...], cuts: list[list[int]], order: int
) -> np.ndarray:
    """Resample output pieces between ``cuts`` (per axis), each from its own source range."""
    ndim = len(shape)
    source_shape = array.shape[-ndim:]
    factors = tuple(n / m for n, m in zip(source_shape, shape, strict=True))
    edges = [[0, *c, m] for c, m in zip(cuts, shape, strict=True)]
    out = np.zeros((*array.shape[:-ndim], *shape), array.dtype if order == 0 else np.float32)
    for index in np.ndindex(*[len(e) - 1 for e in edges]):
        start = [edges[axis][i] for axis, i in enumerate(index)]
        stop = [edges[axis][i + 1] for axis, i in enumerate(index)]
        sources = [
            source_range(a, b, f, n, order)
            for a, b, f, n in zip(start, stop, factors, source_shape, strict=True)
        ]
        part = array[(Ellipsis, *(slice(lo, hi) for lo, hi in sources))]
        region = (Ellipsis, *(slice(a, b) for a, b in zip(start, stop, strict=True)))
        out[region] = resample_piece(part, start, stop, [lo for lo, _ in sources], factors, order)
    return out


# Source shapes, output shapes (factors 3.3, 0.7, 3, 1 and 2 mixed) and uneven output cuts.
CASES = [
    ((2, 99, 70), (30, 100), [[7, 19, 23], [13, 50, 51]]),
    ((66, 21, 35), (20, 30, 12), [[5, 11], [1, 17], [6]]),
    ((33, 14, 99), (10, 20, 30), [[3], [9, 10], [4, 21]]),
]


@pytest.mark.parametrize(("source", "shape", "cuts"), CASES)
def test_pieces_join_without_seams(
    source: tuple[int, ...], shape: tuple[int, ...], cuts: list[list[int]]
) -> None:
    rng = np.random.default_rng(5)
    image = rng.normal(100, 30, source).astype(np.float32)
    whole = _whole(image, shape, 1)
    assert whole.shape == (*source[: len(source) - len(shape)], *shape)
    np.testing.assert_allclose(_piecewise(image, shape, cuts, 1), whole, rtol=1e-6, atol=1e-4)
    labels = rng.integers(0, 9, source[-len(shape) :]).astype(np.uint32)
    np.testing.assert_array_equal(_piecewise(labels, shape, cuts, 0), _whole(labels, shape, 0))


@pytest.mark.parametrize(
    ("source", "shape", "chunks"),
    [((3400, 9), (1030, 13), (500, 9)), ((440, 6, 5), (133, 4, 7), (100, 6, 5))],
)
def test_predict_resamples_lazily_as_the_whole_array(
    source: tuple[int, ...], shape: tuple[int, ...], chunks: tuple[int, ...]
) -> None:
    # Over 1024 (2D) or 128 (3D) output voxels along the first axis: several pieces.
    rng = np.random.default_rng(6)
    image = rng.normal(0, 1, source).astype(np.float32)
    lazy = resample(da.from_array(image, chunks=chunks), shape, order=1)
    assert lazy.numblocks[0] > 1
    np.testing.assert_allclose(lazy.compute(), _whole(image, shape, 1), rtol=1e-6, atol=1e-5)
    labels = rng.integers(0, 5, source).astype(np.uint16)
    back = resample(da.from_array(labels, chunks=chunks), shape, order=0).compute()
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, _whole(labels, shape, 0))


@pytest.mark.parametrize("source", [(60, 60), (12, 30, 30)])
def test_downsampling_smooths_away_a_pattern_finer_than_the_new_grid(
    source: tuple[int, ...],
) -> None:
    checkerboard = (np.indices(source).sum(axis=0) % 2).astype(np.float32)
    shape = tuple(n // 3 for n in source)
    # Every third voxel of a checkerboard is a checkerboard: decimation keeps the pattern.
    decimated = _whole(checkerboard, shape, 0)
    assert decimated.std() == pytest.approx(checkerboard.std())
    smoothed = _whole(checkerboard, shape, 1)
    # A Gaussian of sigma 1 keeps exp(-pi^2 / 2) < 1% of a pattern of period 2 per axis.
    assert smoothed.std() < 0.01 * checkerboard.std()
    np.testing.assert_allclose(smoothed, 0.5, atol=0.01)


def test_axes_kept_or_upsampled_are_not_smoothed() -> None:
    rng = np.random.default_rng(7)
    image = rng.normal(0, 1, (9, 40)).astype(np.float32)
    out = _whole(image, (9, 20), 1)
    # Rows are kept voxel for voxel; along X, every output voxel is smoothed.
    expected = ndimage.gaussian_filter1d(image, 0.5, axis=1, mode="mirror")
    np.testing.assert_allclose(out, expected.reshape(9, 20, 2).mean(axis=2), atol=1e-5)
    upsampled = _whole(image, (18, 40), 1)
    np.testing.assert_allclose(upsampled[1:-1:2], 0.75 * image[:-1] + 0.25 * image[1:], atol=1e-6)


@pytest.mark.parametrize(
    ("source", "scale"), [((90, 99), 1 / 3), ((90, 99), 1 / 3.3), ((24, 36, 30), 0.4)]
)
def test_downsampling_matches_scikit_image_rescale(source: tuple[int, ...], scale: float) -> None:
    rng = np.random.default_rng(8)
    smooth = ndimage.gaussian_filter(rng.normal(size=source), 3)
    smooth = ((smooth - smooth.min()) / np.ptp(smooth)).astype(np.float32)
    expected = rescale(smooth, scale, order=1, anti_aliasing=True, preserve_range=True)
    ours = _whole(smooth, expected.shape, 1)
    # The same sigma, grid and edge mirroring, in float32: values in [0, 1] agree to float
    # rounding, far below the smallest intensity step of a 16-bit image (1.5e-5).
    np.testing.assert_allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize(("source", "shape"), [((50, 70), (15, 100)), ((20, 33, 11), (6, 10, 16))])
def test_labels_keep_their_values(source: tuple[int, ...], shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(9)
    names = np.array([0, 3, 7, 4_000_000_000], np.uint32)
    labels = names[rng.integers(0, len(names), source)]
    out = _whole(labels, shape, 0)
    assert out.dtype == np.uint32
    assert out.shape == shape
    assert set(np.unique(out)) <= set(names.tolist())
    assert len(np.unique(out)) == len(names)
