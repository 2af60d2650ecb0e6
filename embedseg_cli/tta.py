"""Test-time augmentation: average the network over the rotations and flips, on any device.

Each transform of :func:`~embedseg_cli.crops.transforms` (8 in 2D, 16 in 3D) is applied to the
input, the outputs are mapped back (pixels and vector channels: an offset along a flipped axis
changes sign, a quarter turn rotates the offset and swaps the two bandwidths), and the raw,
pre-activation outputs are averaged, as in the paper. Inputs of one shape go through the
network together, as one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from embedseg_cli.crops import Transform, transforms

__all__ = ["apply_transform_torch", "invert_outputs", "predict_tta"]


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


def predict_tta(forward: Callable[[Tensor], Tensor], image: Tensor, ndim: int) -> Tensor:
    """Mean raw output over the augmentation group for one input of shape (C, *S).

    Parameters
    ----------
    forward : callable
        The network: (B, C, *S) -> (B, 2 * ndim + 1, *S).
    image : Tensor of shape (C, *S)
        The input; its spatial extent must suit the network (a multiple of 8).
    ndim : {2, 3}
        Number of spatial axes.

    Returns
    -------
    Tensor of shape (2 * ndim + 1, *S)
        The averaged raw outputs.
    """
    group = transforms(ndim)
    by_shape: dict[tuple[int, ...], list[tuple[Transform, Tensor]]] = {}
    for transform in group:
        moved = apply_transform_torch(image, transform, ndim)
        by_shape.setdefault(tuple(moved.shape), []).append((transform, moved))
    total = torch.zeros((2 * ndim + 1, *image.shape[1:]), dtype=torch.float32, device=image.device)
    for items in by_shape.values():
        raw = forward(torch.stack([moved for _, moved in items]))
        for (transform, _), output in zip(items, raw.unbind(0), strict=True):
            total += invert_outputs(output[None].float(), transform, ndim)[0]
    return total / len(group)
