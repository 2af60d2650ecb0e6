"""From a normalised image to instance labels: network, activations, embeddings, clustering.

Pure functions on tensors and arrays, used by training's validation and by prediction. The
image is padded to a multiple of 8 for the network and the outputs cropped back; embeddings
are in whole-image coordinates (``origin`` says where the array sits in the whole image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch's convention)
from numpy.typing import NDArray
from torch import Tensor, nn

from embedseg_cli.method.clustering import ClusterResult, find_instances_foreground
from embedseg_cli.method.heads import bandwidth_of, offsets_of, seediness_of
from embedseg_cli.method.model import SIZE_MULTIPLE

__all__ = ["ClusterThresholds", "pad_to_multiple", "predict_raw", "segment"]


@dataclass(frozen=True)
class ClusterThresholds:
    """The thresholds of the greedy seed clustering."""

    foreground: float = 0.5
    """Pixels whose seed is above this are foreground."""
    seed: float = 0.9
    """Instances start only at seeds above this."""
    min_object_size: int = 0
    """Instances need more pixels than this."""


def pad_to_multiple(
    image: Tensor, ndim: int, multiple: int = SIZE_MULTIPLE
) -> tuple[Tensor, tuple[slice, ...]]:
    """Pad the last ``ndim`` axes at their end to a multiple of ``multiple`` (reflecting).

    Returns the padded tensor and the slices that crop an output back to the input's extent.
    """
    spatial = image.shape[-ndim:]
    extra = [(-size) % multiple for size in spatial]
    crop = tuple(slice(0, size) for size in spatial)
    if not any(extra):
        return image, crop
    pad: list[int] = []
    for amount in reversed(extra):
        pad += [0, amount]
    # Reflection needs the input to be longer than the padding; tiny inputs replicate.
    mode = "reflect" if all(e < s for e, s in zip(extra, spatial, strict=True)) else "replicate"
    batched = image[None] if image.dim() == ndim + 1 else image
    padded = F.pad(batched, pad, mode=mode)
    return (padded[0] if image.dim() == ndim + 1 else padded), crop


@torch.no_grad()
def predict_raw(model: nn.Module, image: Tensor, ndim: int) -> Tensor:
    """Raw network outputs for one normalised image of shape (C, *S), on the model's device."""
    padded, crop = pad_to_multiple(image, ndim)
    raw: Tensor = model(padded[None])[0]
    return raw[(slice(None), *crop)]


def segment(
    raw: Tensor,
    ndim: int,
    *,
    origin: Sequence[int],
    spacing: Sequence[float],
    scale: float,
    thresholds: ClusterThresholds,
    seed_mask: NDArray[np.bool_] | None = None,
) -> ClusterResult:
    """Cluster raw network outputs of shape (2 * ndim + 1, *S) into instances.

    The same, bit for bit, as ``find_instances`` on ``activate`` and ``embed`` of ``raw``
    (see ``embedseg_cli.method.heads``), but the offsets and bandwidths are activated at the
    foreground pixels only: several times less time and memory where most pixels are
    background.
    """
    shape = tuple(int(n) for n in raw.shape[1:])
    with torch.no_grad():
        flat = raw.detach().reshape(raw.shape[0], -1)
        seed = seediness_of(flat[2 * ndim].float())
        threshold = torch.tensor(thresholds.foreground, dtype=seed.dtype, device=seed.device)
        indices = torch.nonzero(seed > threshold).squeeze(1)
        seed = seed[indices]
        if not bool((seed >= thresholds.seed).any()):
            indices = indices[:0]  # no seed candidate: no instance, nothing else to compute
            seed = seed[:0]
        # One axis at a time, in the order and precision of `embed` and `activate`: a few
        # bytes per foreground pixel at any moment.
        embedding = torch.empty((ndim, len(indices)), dtype=torch.float32, device=seed.device)
        bandwidth = torch.empty_like(embedding)
        rest = indices.clone()
        for axis in reversed(range(ndim)):
            pixel = rest % shape[axis] + origin[axis]
            rest //= shape[axis]
            embedding[axis] = (pixel.to(torch.float64) * (spacing[axis] / scale)).float()
            embedding[axis] += offsets_of(flat[axis][indices].float())
            bandwidth[axis] = bandwidth_of(flat[ndim + axis][indices].float())
        del rest
        return find_instances_foreground(
            shape,
            indices.cpu().numpy(),
            embedding.cpu().numpy(),
            seed.cpu().numpy(),
            bandwidth.cpu().numpy(),
            seed_threshold=thresholds.seed,
            min_object_size=thresholds.min_object_size,
            seed_mask=seed_mask,
        )
