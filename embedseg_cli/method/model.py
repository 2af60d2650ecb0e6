"""The branched ERF-Net of EmbedSeg.

One implementation serves 2D and 3D: ``ndim`` picks the convolution, normalisation, dropout
and pooling layers. The network maps an image batch ``(B, C, *S)`` to ``2 * ndim + 1`` raw
channels per pixel, axes in array order ((Y, X) or (Z, Y, X))::

    [offset_0 .. offset_{ndim-1}, sigma_0 .. sigma_{ndim-1}, seed]

It applies no activation: :mod:`embedseg_cli.method.heads` says what the outputs mean
(the activations and the whole-image embedding).

Since the network is translation-equivariant for shifts
that are multiples of :data:`SIZE_MULTIPLE` (in eval mode), a tile at such an offset predicts
the same embeddings as the whole image, except within :data:`RECEPTIVE_FIELD_RADIUS` pixels of
the tile's border, where the tile's zero padding replaces image content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = [
    "RECEPTIVE_FIELD_RADIUS",
    "SIZE_MULTIPLE",
    "BranchedERFNet",
    "check_input_shape",
    "check_ndim",
    "output_channels",
]

SIZE_MULTIPLE = 8
"""Every spatial extent of the network's input must be a multiple of this (three 2x stages)."""

RECEPTIVE_FIELD_RADIUS = 622
"""Largest distance, in pixels along any axis, between an output pixel and an input pixel it
depends on (the same in 2D and 3D). An output pixel of a tile equals that of the whole image
(in eval mode, tile offset a multiple of :data:`SIZE_MULTIPLE`) if it is at least this far from
every tile border that is not an image border. Most of it comes from the dilated convolutions
at 1/8 resolution (dilation 16 is 128 pixels per tap). Only this bound makes tiles exactly
equal to the whole image; the influence of the border decays much faster (with random weights
the difference fell below 1e-2 at 25, 1e-4 at about 170 and 1e-6 at about 280 pixels from
the border), which is what blending overlapping tiles can rely on."""

_BN_EPS = 1e-3
_ENCODER_DROPOUT = (0.03, 0.3)
_DILATIONS = (2, 4, 8, 16)


def output_channels(ndim: int) -> int:
    """Number of raw output channels for ``ndim`` spatial axes: ``2 * ndim + 1``.

    Examples
    --------
    >>> output_channels(2), output_channels(3)
    (5, 7)
    """
    return 2 * ndim + 1


def check_ndim(ndim: int) -> None:
    """Refuse a dimensionality other than 2 or 3."""
    if ndim not in (2, 3):
        msg = f"ndim must be 2 or 3 (got {ndim})"
        raise ValueError(msg)


def _conv(
    ndim: int,
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, ...],
    *,
    stride: int = 1,
    padding: tuple[int, ...] | int = 0,
    dilation: tuple[int, ...] | int = 1,
) -> nn.Module:
    cls = nn.Conv2d if ndim == 2 else nn.Conv3d
    return cls(
        in_channels,
        out_channels,
        kernel,  # type: ignore[arg-type]
        stride=stride,
        padding=padding,  # type: ignore[arg-type]
        dilation=dilation,  # type: ignore[arg-type]
        bias=True,
    )


def _conv_transpose(
    ndim: int,
    in_channels: int,
    out_channels: int,
    kernel: int,
    *,
    padding: int,
    output_padding: int,
) -> nn.ConvTranspose2d | nn.ConvTranspose3d:
    cls = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
    return cls(
        in_channels,
        out_channels,
        kernel,
        stride=2,
        padding=padding,
        output_padding=output_padding,
        bias=True,
    )


def _batch_norm(ndim: int, channels: int) -> nn.Module:
    cls = nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d
    return cls(channels, eps=_BN_EPS)


class DownsamplerBlock(nn.Module):
    """Halve the resolution: a stride-2 3x3(x3) convolution beside a 2x max-pool, concatenated.

    Parameters
    ----------
    ndim : {2, 3}
        Number of spatial axes.
    in_channels, out_channels : int
        Channels in and out; the convolution contributes ``out_channels - in_channels``.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _conv(
            ndim, in_channels, out_channels - in_channels, (3,) * ndim, stride=2, padding=1
        )
        self.pool = nn.MaxPool2d(2, stride=2) if ndim == 2 else nn.MaxPool3d(2, stride=2)
        self.bn = _batch_norm(ndim, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1))
        return F.relu(out)


class NonBottleneck1d(nn.Module):
    """The ERF-Net residual block with convolutions factorised along each axis.

    Two stages of one 3-tap convolution per axis (3x1, 1x3 in 2D; 3x1x1, 1x3x1, 1x1x3 in 3D)
    with ReLU between them and batch normalisation after each stage; the second stage is
    dilated along every axis. Dropout, a residual connection and a ReLU close the block.

    Parameters
    ----------
    ndim : {2, 3}
        Number of spatial axes.
    channels : int
        Channels in and out.
    dropout : float
        Channel dropout probability (0 disables it).
    dilation : int
        Dilation of the second stage.
    """

    def __init__(self, ndim: int, channels: int, dropout: float, dilation: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.convs_1 = nn.ModuleList(self._axis_conv(channels, axis, 1) for axis in range(ndim))
        self.bn_1 = _batch_norm(ndim, channels)
        self.convs_2 = nn.ModuleList(
            self._axis_conv(channels, axis, dilation) for axis in range(ndim)
        )
        self.bn_2 = _batch_norm(ndim, channels)
        self.dropout = nn.Dropout2d(dropout) if ndim == 2 else nn.Dropout3d(dropout)

    def _axis_conv(self, channels: int, axis: int, dilation: int) -> nn.Module:
        kernel = tuple(3 if a == axis else 1 for a in range(self.ndim))
        padding = tuple(dilation if a == axis else 0 for a in range(self.ndim))
        dilations = tuple(dilation if a == axis else 1 for a in range(self.ndim))
        return _conv(self.ndim, channels, channels, kernel, padding=padding, dilation=dilations)

    @staticmethod
    def _stage(x: Tensor, convs: nn.ModuleList, bn: nn.Module) -> Tensor:
        for i, conv in enumerate(convs):
            x = conv(x)
            if i < len(convs) - 1:
                x = F.relu(x)
        out: Tensor = bn(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self._stage(x, self.convs_1, self.bn_1))
        out = self._stage(out, self.convs_2, self.bn_2)
        if self.dropout.p != 0:
            out = self.dropout(out)
        return F.relu(out + x)


class UpsamplerBlock(nn.Module):
    """Double the resolution: a stride-2 3x3(x3) transposed convolution, batch norm, ReLU."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _conv_transpose(ndim, in_channels, out_channels, 3, padding=1, output_padding=1)
        self.bn = _batch_norm(ndim, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.bn(self.conv(x))
        return F.relu(out)


class Encoder(nn.Module):
    """The shared ERF-Net encoder: ``in_channels`` to 128 channels at 1/8 resolution."""

    def __init__(self, ndim: int, in_channels: int) -> None:
        super().__init__()
        low, high = _ENCODER_DROPOUT
        layers: list[nn.Module] = [
            DownsamplerBlock(ndim, in_channels, 16),
            DownsamplerBlock(ndim, 16, 64),
        ]
        layers += [NonBottleneck1d(ndim, 64, low, 1) for _ in range(5)]
        layers.append(DownsamplerBlock(ndim, 64, 128))
        layers += [NonBottleneck1d(ndim, 128, high, d) for _ in range(2) for d in _DILATIONS]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layers(x)
        return out


class Decoder(nn.Module):
    """One ERF-Net decoder: 128 channels at 1/8 resolution to ``out_channels`` at full size."""

    def __init__(self, ndim: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            UpsamplerBlock(ndim, 128, 64),
            NonBottleneck1d(ndim, 64, 0.0, 1),
            NonBottleneck1d(ndim, 64, 0.0, 1),
            UpsamplerBlock(ndim, 64, 16),
            NonBottleneck1d(ndim, 16, 0.0, 1),
            NonBottleneck1d(ndim, 16, 0.0, 1),
        )
        self.output_conv = _conv_transpose(ndim, 16, out_channels, 2, padding=0, output_padding=0)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.output_conv(self.layers(x))
        return out


def check_input_shape(shape: Sequence[int], ndim: int, in_channels: int) -> None:
    """Raise ``ValueError`` unless ``shape`` is ``(B, in_channels, *S)`` with ``S % 8 == 0``.

    Parameters
    ----------
    shape : sequence of int
        Shape of a network input batch.
    ndim : {2, 3}
        Number of spatial axes the network expects.
    in_channels : int
        Number of channels the network expects.

    Examples
    --------
    >>> check_input_shape((1, 1, 64, 40), 2, 1)
    >>> check_input_shape((1, 1, 64, 42), 2, 1)
    Traceback (most recent call last):
    ...
    ValueError: the network needs every spatial extent to be a multiple of 8 (got (64, 42)); \
pad the input (for example by reflection) to (64, 48)
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != ndim + 2:
        msg = (
            f"the {ndim}D network needs a batch of shape (B, C, {', '.join('ZYX'[-ndim:])}) "
            f"(got shape {shape})"
        )
        raise ValueError(msg)
    if shape[1] != in_channels:
        msg = f"the network was built for {in_channels} input channels (got {shape[1]})"
        raise ValueError(msg)
    spatial = shape[2:]
    if any(n % SIZE_MULTIPLE for n in spatial):
        padded = tuple(-(-n // SIZE_MULTIPLE) * SIZE_MULTIPLE for n in spatial)
        msg = (
            f"the network needs every spatial extent to be a multiple of {SIZE_MULTIPLE} "
            f"(got {spatial}); pad the input (for example by reflection) to {padded}"
        )
        raise ValueError(msg)


class BranchedERFNet(nn.Module):
    """The branched ERF-Net of EmbedSeg (Neven et al. 2019; Lalit et al. 2021), 2D or 3D.

    A shared encoder feeds two decoders: one predicts ``ndim`` offsets and ``ndim`` sigmas,
    the other the seediness. The output is their concatenation, ``2 * ndim + 1`` raw channels
    (see the module docstring); no activation is applied. At construction the offset and sigma
    output weights are zero, the offset biases 0 and the sigma biases 1, so every pixel starts
    embedding to itself with bandwidth ``exp(10)``.

    Parameters
    ----------
    in_channels : int
        Number of image channels.
    ndim : {2, 3}
        Number of spatial axes.

    Examples
    --------
    >>> net = BranchedERFNet(1, 2).eval()
    >>> net(torch.zeros(1, 1, 16, 24)).shape
    torch.Size([1, 5, 16, 24])
    """

    def __init__(self, in_channels: int, ndim: Literal[2, 3]) -> None:
        super().__init__()
        check_ndim(ndim)
        if in_channels < 1:
            msg = f"in_channels must be at least 1 (got {in_channels})"
            raise ValueError(msg)
        self.in_channels = in_channels
        self.ndim: Literal[2, 3] = ndim
        self.out_channels = output_channels(ndim)
        self.encoder = Encoder(ndim, in_channels)
        self.offset_decoder = Decoder(ndim, 2 * ndim)
        self.seed_decoder = Decoder(ndim, 1)
        self.reset_output()

    def reset_output(self) -> None:
        """Set the offset and sigma output convolution to its initial state.

        Weights zero, offset biases 0 and sigma biases 1, as in the original implementation.
        """
        conv = self.offset_decoder.output_conv
        if conv.bias is None:  # pragma: no cover - built with bias=True
            msg = "the output convolution has no bias"
            raise RuntimeError(msg)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias[: self.ndim].fill_(0.0)
            conv.bias[self.ndim :].fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        """Raw outputs ``(B, 2 * ndim + 1, *S)`` for an input batch ``(B, C, *S)``.

        Raises
        ------
        ValueError
            If the input does not have the channels the network was built for or a spatial
            extent is not a multiple of 8.
        """
        check_input_shape(x.shape, self.ndim, self.in_channels)
        features = self.encoder(x)
        return torch.cat([self.offset_decoder(features), self.seed_decoder(features)], dim=1)
