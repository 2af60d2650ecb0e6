import pytest
import torch
from torch import Tensor

from embedseg_cli.data.augment import transforms
from embedseg_cli.method.tta import (
    apply_transform_torch,
    forward_in_batches,
    invert_outputs,
    predict_tta,
    predict_tta_batch,
)


def _equivariant(ndim: int) -> "callable":  # type: ignore[valid-type]
    """An exactly equivariant stand-in for the network: periodic gradients as offsets,
    their magnitudes as bandwidths, the image as seed."""

    def forward(x: Tensor) -> Tensor:
        image = x[:, 0]
        grads = [
            (torch.roll(image, -1, dims=1 + axis) - torch.roll(image, 1, dims=1 + axis)) / 2
            for axis in range(ndim)
        ]
        return torch.stack([*grads, *[g.abs() for g in grads], image], dim=1)

    return forward


@pytest.mark.parametrize(("ndim", "shape"), [(2, (1, 16, 16)), (3, (1, 8, 16, 16))])
def test_tta_of_an_equivariant_network_is_the_network(ndim: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    image = torch.rand(shape)
    forward = _equivariant(ndim)
    expected = forward(image[None])[0]
    assert torch.allclose(predict_tta(forward, image, ndim), expected, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_each_transform_is_undone(ndim: int) -> None:
    torch.manual_seed(1)
    image = torch.rand((1, *((8, 16, 16)[-ndim:])))
    forward = _equivariant(ndim)
    expected = forward(image[None])
    for transform in transforms(ndim):
        moved = apply_transform_torch(image[None], transform, ndim)
        back = invert_outputs(forward(moved), transform, ndim)
        assert torch.allclose(back, expected, atol=1e-6), transform


def test_non_square_images_are_supported() -> None:
    image = torch.rand(1, 8, 24)
    forward = _equivariant(2)
    out = predict_tta(forward, image, 2)
    assert out.shape == (5, 8, 24)


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_a_batch_of_windows_gives_each_window_its_own_average(batch_size: int | None) -> None:
    # A network that is not equivariant, so that the average depends on each transform.
    torch.manual_seed(2)
    weights = torch.rand(5, 1, 3, 3)

    def forward(x: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(x, weights, padding=1)

    images = torch.rand(3, 1, 8, 16)
    batch = predict_tta_batch(forward, images, 2, batch_size=batch_size)
    for image, result in zip(images, batch, strict=True):
        assert torch.allclose(result, predict_tta(forward, image, 2), atol=1e-5)


def test_forward_in_batches_never_exceeds_the_batch_size() -> None:
    sizes: list[int] = []

    def forward(x: Tensor) -> Tensor:
        sizes.append(x.shape[0])
        return x * 2

    images = torch.rand(7, 1, 4, 4)
    assert torch.equal(forward_in_batches(forward, images, 3), images * 2)
    assert sizes == [3, 3, 1]
