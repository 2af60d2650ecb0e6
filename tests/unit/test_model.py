"""Tests of the branched ERF-Net, its activations and the whole-image embedding."""

from __future__ import annotations

import copy
import doctest
import math

import pytest
import torch
from torch import Tensor, nn

from embedseg_cli.method import model as model_module
from embedseg_cli.method.heads import activate, embed
from embedseg_cli.method.model import RECEPTIVE_FIELD_RADIUS, BranchedERFNet, output_channels

# Parameters the original uses in forward (its encoder also holds an unused 1x1 output conv:
# 645 more parameters in 2D, 903 in 3D).
ORIGINAL_USED_PARAMETERS = {2: 2_251_979, 3: 3_689_243}
CONV_TYPES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BN_TYPES = (nn.BatchNorm2d, nn.BatchNorm3d)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomised(ndim: int, seed: int = 0) -> BranchedERFNet:
    """A network in eval mode whose every layer (also the zero-initialised output and the
    batch norms) does something, so that equalities between outputs mean something."""
    torch.manual_seed(seed)
    net = BranchedERFNet(1, ndim)  # type: ignore[arg-type]
    with torch.no_grad():
        nn.init.normal_(net.offset_decoder.output_conv.weight, std=0.3)
        for module in net.modules():
            if isinstance(module, BN_TYPES):
                module.running_mean.normal_(0.0, 0.1)  # type: ignore[union-attr]
                module.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
                module.weight.uniform_(0.8, 1.2)
                module.bias.normal_(0.0, 0.1)
    return net.eval()


# --------------------------------------------------------------------------------------------
# Architecture


@pytest.mark.parametrize("ndim", [2, 3])
def test_parameter_count_matches_the_original(ndim: int) -> None:
    net = BranchedERFNet(1, ndim)  # type: ignore[arg-type]
    assert _count(net) == ORIGINAL_USED_PARAMETERS[ndim]
    assert abs(_count(net) / ORIGINAL_USED_PARAMETERS[ndim] - 1) < 0.01
    # Encoder / decoders as measured on the original (its encoder count minus output_conv).
    expected = {2: (1_873_830, 189_172, 188_977), 3: (2_873_652, 408_118, 407_473)}[ndim]
    assert (_count(net.encoder), _count(net.offset_decoder), _count(net.seed_decoder)) == expected


def test_more_input_channels_only_widen_the_first_convolution() -> None:
    one, three = BranchedERFNet(1, 2), BranchedERFNet(3, 2)
    # DownsamplerBlock(in, 16): conv in -> 16 - in, 3x3, plus the bias.
    first = {c: c * (16 - c) * 9 + (16 - c) for c in (1, 3)}
    assert _count(three) - _count(one) == first[3] - first[1]
    out = three.eval()(torch.randn(2, 3, 16, 24))
    assert out.shape == (2, 5, 16, 24)


@pytest.mark.parametrize(("ndim", "shape"), [(2, (2, 1, 24, 40)), (3, (1, 1, 8, 16, 24))])
def test_output_has_offsets_sigmas_and_seed(ndim: int, shape: tuple[int, ...]) -> None:
    net = BranchedERFNet(1, ndim)  # type: ignore[arg-type]
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], output_channels(ndim), *shape[2:])
    # The initial state of the original: offsets 0, sigma 1 everywhere (s = exp(10)).
    assert torch.equal(out[:, :ndim], torch.zeros_like(out[:, :ndim]))
    assert torch.equal(out[:, ndim : 2 * ndim], torch.ones_like(out[:, ndim : 2 * ndim]))
    assert out[:, 2 * ndim].std() > 0


def test_three_d_blocks_factorise_along_each_axis() -> None:
    net = BranchedERFNet(1, 3)
    block = net.encoder.layers[2]
    kernels = [tuple(conv.kernel_size) for conv in block.convs_1]  # type: ignore[union-attr]
    assert kernels == [(3, 1, 1), (1, 3, 1), (1, 1, 3)]
    dilated = net.encoder.layers[-1]
    dilations = [tuple(conv.dilation) for conv in dilated.convs_2]  # type: ignore[union-attr]
    assert dilations == [(16, 1, 1), (1, 16, 1), (1, 1, 16)]
    eps = {m.eps for m in net.modules() if isinstance(m, BN_TYPES)}
    assert eps == {1e-3}


def test_training_reaches_every_parameter() -> None:
    net = _randomised(2).train()
    out = net(torch.randn(2, 1, 16, 16))
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 16, 20), "multiple of 8 \\(got \\(16, 20\\)\\); pad the input .* to \\(16, 24\\)"),
        ((1, 2, 16, 16), "built for 1 input channels \\(got 2\\)"),
        ((1, 1, 8, 16, 16), "batch of shape \\(B, C, Y, X\\)"),
    ],
)
def test_invalid_inputs_are_rejected(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BranchedERFNet(1, 2)(torch.zeros(shape))


def test_invalid_construction_is_rejected() -> None:
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        BranchedERFNet(1, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels"):
        BranchedERFNet(0, 2)


# --------------------------------------------------------------------------------------------
# Activations and embeddings


def test_activate_applies_tanh_exp_and_sigmoid() -> None:
    raw = torch.randn(2, 7, 3, 4, 5)
    offsets, bandwidth, seed = activate(raw, 3)
    torch.testing.assert_close(offsets, torch.tanh(raw[:, :3]))
    torch.testing.assert_close(bandwidth, torch.exp(10 * raw[:, 3:6]))
    torch.testing.assert_close(seed, torch.sigmoid(raw[:, 6:]))
    with pytest.raises(ValueError, match="shape \\(B, 5, \\*S\\)"):
        activate(raw, 2)


def test_embed_uses_each_items_origin_and_the_spacing() -> None:
    offsets = torch.randn(2, 3, 2, 3, 4)
    origin = torch.tensor([[0, 8, 16], [4, 0, 1000]])
    spacing, scale = (2.5, 1.0, 1.0), 64.0
    e = embed(offsets, origin=origin, spacing=spacing, scale=scale)
    for b, z, y, x in [(0, 1, 2, 3), (1, 0, 1, 2)]:
        position = origin[b] + torch.tensor([z, y, x])
        expected = position * torch.tensor(spacing) / scale + torch.tanh(offsets[b, :, z, y, x])
        torch.testing.assert_close(e[b, :, z, y, x], expected.float())
    # A pixel whose offset is zero embeds exactly at its own centre c * a / R.
    flat = embed(torch.zeros(1, 2, 4, 4), origin=(40, 8), spacing=(1.0, 1.0), scale=16.0)
    assert flat[0, :, 3, 2].tolist() == [43 / 16, 10 / 16]


def test_embed_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="origin must have shape"):
        embed(torch.zeros(2, 2, 4, 4), origin=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="spacing needs 2 positive values"):
        embed(torch.zeros(1, 2, 4, 4), origin=(0, 0), spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="offsets must have shape"):
        embed(torch.zeros(1, 3, 4, 4), origin=(0, 0))


def test_doctests() -> None:
    failures, tried = doctest.testmod(model_module, extraglobs={"torch": torch})[:2]
    assert tried > 0
    assert failures == 0


# --------------------------------------------------------------------------------------------
# Tiles predict what the whole image predicts (DESIGN decision 1)


def _compare_tile(
    net: BranchedERFNet, image: Tensor, origin: tuple[int, ...], size: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """Max difference (over channels) between tile and whole-image outputs at every tile
    pixel, and each tile pixel's distance to the nearest tile border inside the image."""
    ndim = net.ndim
    region: tuple[slice, ...] = (slice(None), slice(None))
    region += tuple(slice(o, o + s) for o, s in zip(origin, size, strict=True))
    with torch.no_grad():
        whole = net(image)
        tile = net(image[region])
    scale = 1024.0
    whole_e = embed(whole[:, :ndim], origin=(0,) * ndim, scale=scale)[region]
    tile_e = embed(tile[:, :ndim], origin=origin, scale=scale)
    difference = torch.maximum(
        (whole_e - tile_e).abs().amax(dim=(0, 1)),
        (whole[region][:, ndim:] - tile[:, ndim:]).abs().amax(dim=(0, 1)),
    )
    distance = torch.full(size, math.inf)
    for axis, (o, s, n) in enumerate(zip(origin, size, image.shape[2:], strict=True)):
        view = [1] * ndim
        view[axis] = s
        position = torch.arange(s).view(view)
        if o > 0:  # a border inside the image
            distance = torch.minimum(distance, position.float())
        if o + s < n:
            distance = torch.minimum(distance, (s - 1 - position).float())
    return difference, distance


@pytest.mark.slow
def test_a_2d_tile_predicts_the_whole_image_away_from_its_border() -> None:
    net = _randomised(2)
    size = (2 * RECEPTIVE_FIELD_RADIUS + 16) // 8 * 8
    image = torch.randn(1, 1, size + 16, size + 8, generator=torch.Generator().manual_seed(1))
    difference, distance = _compare_tile(net, image, (8, 8), (size, size))
    interior = distance >= RECEPTIVE_FIELD_RADIUS
    assert interior.sum() >= 100
    assert float(difference[interior].max()) < 1e-4
    # Near the border the zero padding of the tile shows: the margin is needed.
    assert float(difference[distance < 8].max()) > 1e-2


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_3d_tile_predicts_the_whole_volume_away_from_its_border(axis: int) -> None:
    net = _randomised(3)
    length = (2 * RECEPTIVE_FIELD_RADIUS + 16) // 8 * 8
    shape = [8, 8, 16]
    shape[axis] = length + 16
    size = list(shape)
    size[axis] = length
    origin = [0, 0, 0]
    origin[axis] = 8
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(2))
    difference, distance = _compare_tile(net, image, tuple(origin), tuple(size))
    interior = distance >= RECEPTIVE_FIELD_RADIUS
    assert interior.any()
    assert float(difference[interior].max()) < 1e-4
    assert float(difference[distance < 8].max()) > 1e-2


def test_a_tile_offset_that_is_not_a_multiple_of_8_breaks_the_equality() -> None:
    net = _randomised(2)
    length = (2 * RECEPTIVE_FIELD_RADIUS + 16) // 8 * 8
    image = torch.randn(1, 1, 16, length + 8, generator=torch.Generator().manual_seed(3))
    difference, distance = _compare_tile(net, image, (0, 4), (16, length))
    assert float(difference[distance >= RECEPTIVE_FIELD_RADIUS].max()) > 1e-3


def _positive_probe(net: BranchedERFNet) -> BranchedERFNet:
    """The network with positive weights, no biases and identity batch norms in float64: an
    output is non-zero exactly where it depends on a non-zero input."""
    probe = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, CONV_TYPES):
                module.weight.fill_(1.0 / module.weight[0].numel())
                module.bias.zero_()  # type: ignore[union-attr]
            elif isinstance(module, BN_TYPES):
                module.reset_parameters()
    return probe


def test_receptive_field_radius_is_the_measured_one() -> None:
    probe = _positive_probe(BranchedERFNet(1, 2))
    length, centre = 1600, 800
    for axis in (0, 1):
        # One impulse per position modulo 8, each in its own batch item.
        shape = [8, 8]
        shape[axis] = length
        impulses = torch.zeros(8, 1, *shape, dtype=torch.float64)
        for phase in range(8):
            index = [phase, 0, 3, 3]
            index[2 + axis] = centre + phase
            impulses[tuple(index)] = 1.0
        with torch.no_grad():
            reached = probe(impulses).abs().sum(dim=1) > 0
        radius = 0
        for phase in range(8):
            other = 1 - axis
            positions = reached[phase].any(dim=other).nonzero().flatten()
            # The probe is long enough: the reached positions stop short of its ends.
            assert positions.min() > 0
            assert positions.max() < length - 1
            radius = max(radius, int((positions - (centre + phase)).abs().max()))
        assert radius == RECEPTIVE_FIELD_RADIUS
