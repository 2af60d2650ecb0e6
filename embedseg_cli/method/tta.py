"""Test-time augmentation: average the network over the rotations and flips, on any device.

Each transform of :func:`~embedseg_cli.data.augment.transforms` (8 in 2D, 16 in 3D) is applied to the
input, the outputs are mapped back (pixels and vector channels: an offset along a flipped axis
changes sign, a quarter turn rotates the offset and swaps the two bandwidths), and the raw,
pre-activation outputs are averaged, as in the paper. Inputs of one shape go through the
network together, as one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from embedseg_cli.data.augment import Transform, transforms

__all__ = [
    "apply_transform_torch",
    "forward_in_batches",
    "invert_outputs",
    "predict_tta",
    "predict_tta_batch",
]


def apply_transform_torch(x: Tensor, transform: Transform, ndim: int) -> Tensor:
    """Apply ``transform`` to the last ``ndim`` axes of ``x`` (as ``crops.apply_transform``)."""
    lead = x.dim() - ndim
    if transform.flips:
        x = torch.flip(x, [lead + axis for axis in transform.flips])
    return torch.rot90(x, transform.rot90, dims=(-2, -1))


def invert_outputs(raw: Tensor, transform: Transform, ndim: int) -> Tensor:
    """Map raw outputs (B, 2 * ndim + 1, *S) of a transformed input back to the input's frame."""
    lead = raw.dim() - ndim
    out = torch.rot90(raw, -transform.rot90, dims=(-2, -1))
    if transform.flips:
        out = torch.flip(out, [lead + axis for axis in transform.flips])
    channels = list(out.unbind(1))
    y, x = ndim - 2, ndim - 1  # the offset channels of the Y and X axes
    for _ in range(transform.rot90 % 4):
        # A quarter turn moved an offset (dy, dx) to (-dx, dy); undo it.
        channels[y], channels[x] = channels[x], -channels[y]
        channels[ndim + y], channels[ndim + x] = channels[ndim + x], channels[ndim + y]
    for axis in transform.flips:
        channels[axis] = -channels[axis]
    return torch.stack(channels, dim=1)


def predict_tta(
    forward: Callable[[Tensor], Tensor], image: Tensor, ndim: int, *, batch_size: int | None = None
) -> Tensor:
    """Mean raw output over the augmentation group for one input of shape (C, *S).

    Parameters
    ----------
    forward : callable
        The network: (B, C, *S) -> (B, 2 * ndim + 1, *S).
    image : Tensor of shape (C, *S)
        The input; its spatial extent must suit the network (a multiple of 8).
    ndim : {2, 3}
        Number of spatial axes.
    batch_size : int, optional
        Most images per call of ``forward``; None: every transform of one shape at once.

    Returns
    -------
    Tensor of shape (2 * ndim + 1, *S)
        The averaged raw outputs.
    """
    return predict_tta_batch(forward, image[None], ndim, batch_size=batch_size)[0]


def predict_tta_batch(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    ndim: int,
    *,
    batch_size: int | None = None,
) -> Tensor:
    """:func:`predict_tta` for a batch of inputs of one shape, (B, C, *S) -> (B, 2n + 1, *S).

    The transforms of all inputs go through ``forward`` together, ``batch_size`` images at
    a time (None: all images of one shape at once).
    """
    group = transforms(ndim)
    count = images.shape[0]
    by_shape: dict[tuple[int, ...], list[tuple[Transform, Tensor]]] = {}
    for transform in group:
        moved = apply_transform_torch(images, transform, ndim)
        by_shape.setdefault(tuple(moved.shape), []).append((transform, moved))
    total = torch.zeros(
        (count, 2 * ndim + 1, *images.shape[2:]), dtype=torch.float32, device=images.device
    )
    for items in by_shape.values():
        raw = forward_in_batches(forward, torch.cat([moved for _, moved in items]), batch_size)
        for (transform, _), output in zip(items, torch.split(raw, count), strict=True):
            total += invert_outputs(output.float(), transform, ndim)
    return total / len(group)


def forward_in_batches(
    forward: Callable[[Tensor], Tensor], images: Tensor, batch_size: int | None
) -> Tensor:
    """``forward(images)``, calling it on at most ``batch_size`` images at a time."""
    if batch_size is None or images.shape[0] <= batch_size:
        return forward(images)
    return torch.cat([forward(part) for part in torch.split(images, batch_size)])
