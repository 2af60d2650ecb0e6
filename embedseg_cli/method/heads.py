"""What the network's outputs mean: their activations and the whole-image embedding.

The network (:mod:`embedseg_cli.method.model`) maps an image batch ``(B, C, *S)`` to
``2 * ndim + 1`` raw channels per pixel, axes in array order ((Y, X) or (Z, Y, X))::

    [offset_0 .. offset_{ndim-1}, sigma_0 .. sigma_{ndim-1}, seed]

Each head has one activation, written once here and used by training's loss, predict's
clustering and the exported TorchScript model: offsets ``tanh``, bandwidth
``exp(BANDWIDTH_GAIN * sigma)``, seed ``sigmoid``.

Embeddings live in whole-image coordinates with a fixed scale (``DESIGN.md``, decision 1)::

    e_k(p) = (origin_k + p_k) * a_k / R + tanh(o_k(p))

with ``origin`` the position of the tile or crop in the whole image (pixels), ``a`` the
spacing of each axis relative to x (``a_z`` is the anisotropy, ``a_y = a_x = 1``) and ``R``
the embedding scale in pixels per unit (:data:`EMBEDDING_SCALE`). A centre ``c`` given in
pixels sits at ``c_k * a_k / R``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from embedseg_cli.method.model import check_ndim, output_channels

__all__ = [
    "BANDWIDTH_GAIN",
    "EMBEDDING_SCALE",
    "Activations",
    "activate",
    "bandwidth_of",
    "embed",
    "offsets_of",
    "seediness_of",
]

BANDWIDTH_GAIN = 10.0
"""The bandwidth is ``exp(BANDWIDTH_GAIN * sigma)`` for the raw sigma output."""

EMBEDDING_SCALE = 1024.0
"""Default embedding scale ``R``: pixels (along x) per embedding unit."""


def offsets_of(raw: Tensor) -> Tensor:
    """Offsets in embedding units from raw offsets: ``tanh``, so at most 1 unit."""
    return torch.tanh(raw)


def bandwidth_of(raw: Tensor, gain: float = BANDWIDTH_GAIN) -> Tensor:
    """Bandwidth (inverse squared Gaussian width) from raw sigma: ``exp(BANDWIDTH_GAIN * sigma)``.

    ``gain`` is an argument (with the one default) so that TorchScript can compile it.
    """
    return torch.exp(gain * raw)


def seediness_of(raw: Tensor) -> Tensor:
    """Seediness in ``[0, 1]`` from the raw seed output: ``sigmoid``."""
    return torch.sigmoid(raw)


class Activations(NamedTuple):
    """Activated network outputs, each with the batch and spatial axes of the raw output.

    Attributes
    ----------
    offsets : Tensor of shape (B, ndim, *S)
        ``tanh`` of the raw offsets, in embedding units.
    bandwidth : Tensor of shape (B, ndim, *S)
        ``exp(10 * sigma)``: the inverse squared width of each pixel's Gaussian per axis.
    seed : Tensor of shape (B, 1, *S)
        ``sigmoid`` of the raw seediness.
    """

    offsets: Tensor
    bandwidth: Tensor
    seed: Tensor


def _check_raw(raw: Tensor, ndim: int) -> None:
    check_ndim(ndim)
    if raw.dim() != ndim + 2 or raw.shape[1] != output_channels(ndim):
        msg = (
            f"raw {ndim}D network output must have shape (B, {output_channels(ndim)}, *S) with "
            f"{ndim} spatial axes (got {tuple(raw.shape)})"
        )
        raise ValueError(msg)


def activate(raw: Tensor, ndim: int) -> Activations:
    """Apply the output activations to raw network outputs.

    Parameters
    ----------
    raw : Tensor of shape (B, 2 * ndim + 1, *S)
        Raw network output (for example averaged over test-time augmentations).
    ndim : {2, 3}
        Number of spatial axes.

    Returns
    -------
    Activations
        Offsets ``tanh(o)``, bandwidth ``exp(10 * sigma)`` and seed ``sigmoid(seed)``.

    Examples
    --------
    >>> raw = torch.zeros(1, 5, 2, 2)
    >>> out = activate(raw, 2)
    >>> out.offsets.shape, float(out.bandwidth.max()), float(out.seed.max())
    (torch.Size([1, 2, 2, 2]), 1.0, 0.5)
    """
    _check_raw(raw, ndim)
    return Activations(
        offsets=offsets_of(raw[:, :ndim]),
        bandwidth=bandwidth_of(raw[:, ndim : 2 * ndim]),
        seed=seediness_of(raw[:, 2 * ndim :]),
    )


def _origin_tensor(
    origin: Tensor | Sequence[int] | Sequence[Sequence[int]], batch: int, ndim: int
) -> Tensor:
    out = torch.as_tensor(origin, dtype=torch.float64)
    if out.dim() == 1:
        out = out.expand(batch, -1)
    if out.shape != (batch, ndim):
        msg = f"origin must have shape ({ndim},) or ({batch}, {ndim}) (got {tuple(out.shape)})"
        raise ValueError(msg)
    return out


def _spacing_tuple(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(a) for a in spacing)
    if len(values) != ndim or any(not a > 0 for a in values):
        msg = f"spacing needs {ndim} positive values, one per axis (got {tuple(spacing)})"
        raise ValueError(msg)
    return values


def embed(
    offsets_raw: Tensor,
    *,
    origin: Tensor | Sequence[int] | Sequence[Sequence[int]],
    spacing: Sequence[float] | None = None,
    scale: float = EMBEDDING_SCALE,
) -> Tensor:
    """Embeddings in whole-image coordinates: ``(origin + p) * spacing / scale + tanh(o)``.

    The pixel coordinates are generated on the fly for the tensor's own extent, so the same
    function serves crops, tiles and whole images of any size.

    Parameters
    ----------
    offsets_raw : Tensor of shape (B, ndim, *S)
        Raw (pre-``tanh``) offsets, e.g. ``raw[:, :ndim]`` of the network output.
    origin : Tensor or sequence of shape (ndim,) or (B, ndim)
        Position of each batch item's pixel 0 in the whole image, in pixels; a single
        position applies to every item.
    spacing : sequence of float, optional
        Pixel spacing per axis relative to x (``(anisotropy, 1, 1)`` in 3D). Default: 1.
    scale : float
        Embedding scale ``R``: pixels per embedding unit.

    Returns
    -------
    Tensor of shape (B, ndim, *S)
        The embedding of every pixel, in embedding units.

    Examples
    --------
    >>> e = embed(torch.zeros(1, 2, 2, 3), origin=(8, 16), scale=1.0)
    >>> e[0, 0].tolist(), e[0, 1].tolist()
    ([[8.0, 8.0, 8.0], [9.0, 9.0, 9.0]], [[16.0, 17.0, 18.0], [16.0, 17.0, 18.0]])
    """
    ndim = offsets_raw.dim() - 2
    check_ndim(ndim)
    if offsets_raw.shape[1] != ndim:
        msg = f"offsets must have shape (B, {ndim}, *S) (got {tuple(offsets_raw.shape)})"
        raise ValueError(msg)
    if not scale > 0:
        msg = f"the embedding scale must be positive (got {scale})"
        raise ValueError(msg)
    batch, spatial = offsets_raw.shape[0], offsets_raw.shape[2:]
    start = _origin_tensor(origin, batch, ndim).to(offsets_raw.device)
    steps = _spacing_tuple(spacing, ndim)
    axes = []
    for axis, (size, step) in enumerate(zip(spatial, steps, strict=True)):
        view = [1] * ndim
        view[axis] = size
        # Whole-image pixel index, exact in float64, then scaled once: the same global pixel
        # gets the same coordinate bit for bit in every tile.
        pixel = start[:, axis].view(batch, *([1] * ndim)) + torch.arange(
            size, dtype=torch.float64, device=offsets_raw.device
        ).view(1, *view)
        coordinate = (pixel * (step / scale)).to(offsets_raw.dtype)
        axes.append(coordinate + offsets_of(offsets_raw[:, axis]))
    return torch.stack(axes, dim=1)
