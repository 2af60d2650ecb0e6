"""Tests of the EmbedSeg loss against a plain whole-crop implementation of the paper's equations."""

from __future__ import annotations

import doctest
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from embedseg_cli.method import loss as loss_module
from embedseg_cli.method.loss import embedseg_loss, lovasz_hinge_rows

Centres = list[tuple[Tensor, Tensor]]


# --------------------------------------------------------------------------------------------
# The reference: one instance at a time, over the whole crop, in whole-image coordinates.


def reference_lovasz_hinge(logits: Tensor, positives: Tensor) -> Tensor:
    """Berman et al.'s binary Lovász hinge of a flat vector of logits, written out plainly."""
    signs = 2.0 * positives - 1.0
    errors = 1.0 - logits * signs
    ordered, order = torch.sort(errors, descending=True)
    labels = positives[order]
    total = labels.sum()
    intersection = total - labels.cumsum(0)
    union = total + (1.0 - labels).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return torch.dot(torch.relu(ordered), jaccard.detach())


def reference_loss(
    raw: Tensor,
    labels: Tensor,
    centres: Centres,
    *,
    origin: Tensor,
    spacing: Sequence[float],
    scale: float,
    foreground_weight: float,
    weights: tuple[float, float, float] = (1.0, 10.0, 1.0),
) -> tuple[Tensor, dict[str, Tensor]]:
    ndim = raw.dim() - 2
    shape = raw.shape[2:]
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=raw.dtype) for n in shape], indexing="ij")
    )
    column = (ndim,) + (1,) * ndim
    step = torch.tensor(spacing, dtype=raw.dtype).view(column)
    totals, instance_terms, variance_terms, seed_terms = [], [], [], []
    for b in range(raw.shape[0]):
        start = origin[b].to(raw.dtype).view(column)
        embedding = (start + grid) * step / scale + torch.tanh(raw[b, :ndim])
        sigma = raw[b, ndim : 2 * ndim]
        seed = torch.sigmoid(raw[b, 2 * ndim])
        seed_loss = (seed[labels[b] == 0] ** 2).sum()
        instance_loss = raw.new_zeros(())
        variance_loss = raw.new_zeros(())
        count = 0
        ids, points = centres[b]
        for label, point in zip(ids.tolist(), points, strict=True):
            mask = labels[b] == label
            if not mask.any():
                continue
            count += 1
            sigma_in = sigma[:, mask]
            mean = sigma_in.mean(dim=1)
            variance_loss = variance_loss + ((sigma_in - mean.detach()[:, None]) ** 2).mean()
            bandwidth = torch.exp(10.0 * mean).view(column)
            centre = ((origin[b] + point.to(raw.dtype)).view(column)) * step / scale
            phi = torch.exp(-(bandwidth * (embedding - centre) ** 2).sum(dim=0))
            instance_loss = instance_loss + reference_lovasz_hinge(
                (2.0 * phi - 1.0).flatten(), mask.flatten().to(raw.dtype)
            )
            seed_loss = (
                seed_loss + foreground_weight * ((seed[mask] - phi[mask].detach()) ** 2).sum()
            )
        if count:
            instance_loss = instance_loss / count
            variance_loss = variance_loss / count
        seed_loss = seed_loss / labels[b].numel()
        w_inst, w_var, w_seed = weights
        totals.append(w_inst * instance_loss + w_var * variance_loss + w_seed * seed_loss)
        instance_terms.append(instance_loss)
        variance_terms.append(variance_loss)
        seed_terms.append(seed_loss)
    terms = {
        "instance": torch.stack(instance_terms).mean(),
        "variance": torch.stack(variance_terms).mean(),
        "seed": torch.stack(seed_terms).mean(),
    }
    return torch.stack(totals).mean(), terms


# --------------------------------------------------------------------------------------------
# Test data: balls in a crop, with whole-object centres that may lie outside it.


def _balls(
    shape: tuple[int, ...], spec: list[tuple[tuple[float, ...], float]]
) -> tuple[Tensor, Tensor, Tensor]:
    """Labels 1..n of balls (centre, radius), later ones drawn over earlier ones."""
    grid = np.indices(shape).astype(float)
    labels = np.zeros(shape, dtype=np.int64)
    for value, (centre, radius) in enumerate(spec, start=1):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        labels[inside] = value
    ids = torch.arange(1, len(spec) + 1)
    centres = torch.tensor([c for c, _ in spec], dtype=torch.float64)
    return torch.from_numpy(labels), ids, centres


def _case_2d() -> tuple[Tensor, Centres, Tensor, tuple[float, ...]]:
    shape = (44, 52)  # not multiples of the window blocks
    first, ids0, c0 = _balls(
        shape,
        [
            ((10.0, 12.0), 5.0),
            ((30.0, 20.0), 6.0),
            ((40.0, 45.0), 7.0),  # touches two borders
            ((-3.0, 30.0), 6.0),  # centre outside the crop
            ((20.0, 40.0), 4.0),
        ],
    )
    first[first == 5] = 9  # a labelled object without a centre: ignored by the seed term
    c0 = c0[:4]
    ids0 = ids0[:4]
    ids0 = torch.cat([ids0, torch.tensor([7])])  # an id that is absent from the crop
    c0 = torch.cat([c0, torch.tensor([[5.0, 5.0]], dtype=torch.float64)])
    second, ids1, c1 = _balls(
        shape, [((22.0, 26.0), 8.0), ((5.0, 5.0), 5.0), ((43.0, 10.0), 4.0), ((22, 55.0), 5.0)]
    )
    labels = torch.stack([first, second])
    origin = torch.tensor([[64.0, 1000.0], [8.0, 16.0]])
    return labels, [(ids0, c0), (ids1, c1)], origin, (1.0, 1.0)


def _case_3d() -> tuple[Tensor, Centres, Tensor, tuple[float, ...]]:
    shape = (12, 36, 40)
    labels, ids, centres = _balls(
        shape,
        [
            ((4.0, 8.0, 8.0), 4.0),
            ((6.0, 24.0, 14.0), 5.0),
            ((2.0, 10.0, 37.0), 4.5),  # touches the z, x borders
            ((14.0, 26.0, 30.0), 5.0),  # centre outside the crop
        ],
    )
    # Anisotropic: the balls are flattened along z in physical units, which is fine here.
    return labels[None], [(ids, centres)], torch.tensor([[16.0, 40.0, 72.0]]), (2.0, 1.0, 1.0)


def _raw(
    labels: Tensor,
    dtype: torch.dtype,
    sigma: float,
    seed: int,
    centres: Centres | None = None,
) -> Tensor:
    """Random raw outputs with moderate offsets and a per-batch-item sigma level; with
    ``centres``, the pixel at each centre inside the crop embeds exactly at it (phi = 1)."""
    generator = torch.Generator().manual_seed(seed)
    batch, ndim = labels.shape[0], labels.dim() - 1
    shape = (batch, 2 * ndim + 1, *labels.shape[1:])
    raw = torch.randn(shape, generator=generator, dtype=torch.float64)
    raw[:, :ndim] *= 0.15
    level = torch.linspace(sigma, sigma + 0.3, batch, dtype=torch.float64)
    raw[:, ndim : 2 * ndim] = level.view(-1, 1, *(1,) * ndim) + 0.1 * raw[:, ndim : 2 * ndim]
    for b, (_, points) in enumerate(centres or []):
        for point in points.long():
            if all(0 <= c < n for c, n in zip(point.tolist(), labels.shape[1:], strict=True)):
                raw[(b, slice(0, ndim), *point.tolist())] = 0.0
    return raw.to(dtype).requires_grad_(True)


CASES = {"2d": _case_2d, "3d": _case_3d}
# Sigma levels at which most of each crop lies outside the windows.
SHARP = {"2d": 0.55, "3d": 0.7}


def _compare(
    case: str,
    dtype: torch.dtype,
    sigma: float,
    monkeypatch: pytest.MonkeyPatch,
    *,
    exact_centres: bool = False,
) -> tuple[int, int]:
    labels, centres, origin, spacing = CASES[case]()
    raw = _raw(labels, dtype, sigma, seed=7, centres=centres if exact_centres else None)
    scale = 32.0
    kept: list[int] = []
    hinge = loss_module.lovasz_hinge_rows

    def spy(errors: Tensor, positives: Tensor) -> Tensor:
        kept.append(int((errors >= 0).sum()))  # padding entries are negative
        return hinge(errors, positives)

    monkeypatch.setattr(loss_module, "lovasz_hinge_rows", spy)
    expected, expected_terms = reference_loss(
        raw, labels, centres, origin=origin, spacing=spacing, scale=scale, foreground_weight=7.0
    )
    got, terms = embedseg_loss(
        raw, labels, centres, spacing=spacing, scale=scale, foreground_weight=7.0
    )
    # Exact up to rounding: float64 agrees to summation order.
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    for name in ("instance", "variance", "seed"):
        torch.testing.assert_close(
            terms[name], expected_terms[name], atol=tolerance, rtol=tolerance
        )
    (expected_grad,) = torch.autograd.grad(expected, raw)
    (grad,) = torch.autograd.grad(got, raw)
    torch.testing.assert_close(grad, expected_grad, atol=tolerance, rtol=tolerance)
    assert float(expected_grad.abs().max()) > 1e-3
    present = sum(
        len(set(torch.unique(labels[b]).tolist()) & set(ids.tolist()))
        for b, (ids, _) in enumerate(centres)
    )
    [entries] = kept
    return entries, labels[0].numel() * present


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loss_matches_the_whole_crop_reference(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, whole = _compare(case, dtype, sigma=SHARP[case], monkeypatch=monkeypatch)
    # The windows leave most of the crop out, so the comparison exercises the windowing.
    assert entries < 0.6 * whole


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loss_matches_the_reference_when_a_pixel_embeds_exactly_at_its_centre(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    # phi = 1 at the centre pixel: negatives are left out only for a negligible phi.
    entries, whole = _compare(
        case, dtype, sigma=SHARP[case], monkeypatch=monkeypatch, exact_centres=True
    )
    assert entries < 0.5 * whole


@pytest.mark.parametrize("case", CASES)
def test_loss_matches_the_reference_when_windows_cover_the_crop(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries, whole = _compare(case, torch.float64, sigma=-0.5, monkeypatch=monkeypatch)
    assert entries == whole


# --------------------------------------------------------------------------------------------
# The Lovász hinge


def test_reference_lovasz_hinge_is_the_jaccard_loss_on_binary_errors() -> None:
    # At a 0/1 error vector the Lovász extension equals the Jaccard loss of the mispredicted set.
    rng = np.random.default_rng(3)
    for _ in range(20):
        positives = torch.from_numpy(rng.integers(0, 2, 12)).double()
        positives[0] = 1.0
        wrong = torch.from_numpy(rng.integers(0, 2, 12)).double()
        logits = (2.0 * positives - 1.0) * (1.0 - wrong)
        mispredicted = wrong.bool()
        union = (positives.bool() | mispredicted).sum()
        expected = mispredicted.sum() / union
        assert float(reference_lovasz_hinge(logits, positives)) == pytest.approx(float(expected))


def test_batched_lovasz_hinge_matches_the_plain_one_with_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    rows, expected = [], []
    for length in (5, 17, 9):
        logits = torch.randn(length, generator=generator, dtype=torch.float64)
        positives = (torch.rand(length, generator=generator) < 0.4).double()
        positives[0] = 1.0
        expected.append(reference_lovasz_hinge(logits, positives))
        rows.append((1.0 - logits * (2.0 * positives - 1.0), positives))
    errors = torch.full((3, 20), -1.0, dtype=torch.float64)
    positives = torch.zeros((3, 20), dtype=torch.float64)
    for i, (error, positive) in enumerate(rows):
        errors[i, : len(error)] = error
        positives[i, : len(error)] = positive
    torch.testing.assert_close(lovasz_hinge_rows(errors, positives), torch.stack(expected))


def test_doctests() -> None:
    failures, tried = doctest.testmod(loss_module, extraglobs={"torch": torch})[:2]
    assert tried > 0
    assert failures == 0


# --------------------------------------------------------------------------------------------
# Behaviour


def _perfect_raw(
    labels: Tensor, ids: Tensor, centres: Tensor, spacing: Sequence[float], scale: float
) -> Tensor:
    """Offsets that embed every instance pixel exactly at its centre, a sharp bandwidth and
    a seed equal to the membership (1 inside, 0 outside)."""
    ndim = labels.dim()
    raw = torch.zeros((1, 2 * ndim + 1, *labels.shape), dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in labels.shape], indexing="ij"))
    raw[0, ndim : 2 * ndim] = 2.0  # s = exp(20): a neighbour pixel has phi = 0
    raw[0, 2 * ndim] = -40.0
    for label, centre in zip(ids.tolist(), centres, strict=True):
        mask = labels == label
        for axis in range(ndim):
            shift = (centre[axis] - grid[axis][mask]) * spacing[axis] / scale
            raw[0, axis][mask] = torch.atanh(shift)
        raw[0, 2 * ndim][mask] = 40.0
    return raw


@pytest.mark.parametrize("case", CASES)
def test_a_perfect_prediction_has_near_zero_loss(case: str) -> None:
    labels, centres, _, spacing = CASES[case]()
    labels = labels[:1]
    ids, points = centres[0]
    # A perfect prediction needs centres inside their objects: use each object's first pixel.
    present = [i for i in ids.tolist() if (labels[0] == i).any()]
    points = torch.stack([(labels[0] == i).nonzero()[0].double() for i in present])
    ids = torch.tensor(present)
    scale = 1024.0
    raw = _perfect_raw(labels[0], ids, points, spacing, scale).requires_grad_(True)
    _, terms = embedseg_loss(
        raw, labels, [(ids, points)], spacing=spacing, scale=scale, foreground_weight=10.0
    )
    assert float(terms["instance"].detach()) < 1e-6
    assert float(terms["seed"].detach()) < 1e-6
    assert float(terms["variance"].detach()) == 0.0
    # ... whereas the network's initial state (offsets 0, bandwidth exp(10)) is far from it.
    start = torch.zeros_like(raw)
    start[:, len(spacing) : 2 * len(spacing)] = 1.0
    _, initial = embedseg_loss(
        start, labels, [(ids, points)], spacing=spacing, scale=scale, foreground_weight=10.0
    )
    assert float(initial["instance"]) > 0.3
    assert float(initial["seed"]) > 0.01


def test_the_loss_decreases_under_optimisation() -> None:
    labels, ids, centres = _balls(
        (32, 32), [((8.0, 8.0), 5.0), ((20.0, 22.0), 6.0), ((6.0, 26.0), 4.0)]
    )
    raw = torch.zeros((1, 5, 32, 32))
    raw[:, 2:4] = 1.0
    raw.requires_grad_(True)
    optimiser = torch.optim.Adam([raw], lr=0.05)
    history = []
    for _ in range(25):
        optimiser.zero_grad()
        loss, _ = embedseg_loss(
            raw, labels[None], [(ids, centres)], foreground_weight=10.0, scale=64.0
        )
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.5 * history[0]
    assert all(np.isfinite(history))


def test_weights_scale_the_terms() -> None:
    labels, centres, _, spacing = _case_2d()
    raw = _raw(labels, torch.float64, 0.5, seed=1)
    kwargs: dict[str, Any] = {"spacing": spacing, "scale": 32.0, "foreground_weight": 3.0}
    _, terms = embedseg_loss(raw, labels, centres, **kwargs)
    for w_inst, w_var, w_seed in itertools.product((0.0, 2.0), (0.0, 5.0), (0.0, 0.5)):
        loss, _ = embedseg_loss(
            raw, labels, centres, w_inst=w_inst, w_var=w_var, w_seed=w_seed, **kwargs
        )
        # The terms are per-crop means, so the weighted sum of the means is the mean loss.
        expected = w_inst * terms["instance"] + w_var * terms["variance"] + w_seed * terms["seed"]
        torch.testing.assert_close(loss, expected)


def test_a_crop_without_instances_has_only_the_seed_term() -> None:
    raw = torch.randn(1, 5, 16, 16, requires_grad=True)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))
    loss, terms = embedseg_loss(raw, labels, [empty], foreground_weight=10.0)
    assert float(terms["instance"].detach()) == 0.0
    assert float(terms["variance"].detach()) == 0.0
    torch.testing.assert_close(loss, (torch.sigmoid(raw[0, 4]) ** 2).mean())
    loss.backward()  # type: ignore[no-untyped-call]
    assert raw.grad is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"raw": torch.zeros(1, 4, 8, 8)}, "raw must have shape"),
        ({"labels": torch.zeros(1, 8, 9, dtype=torch.long)}, "labels must have shape"),
        ({"centres": []}, "one \\(ids, centres\\) pair per batch item"),
        ({"centres": [(torch.tensor([1]), torch.zeros(1, 3))]}, "centres must have shape"),
        ({"centres": [(torch.tensor([0]), torch.zeros(1, 2))]}, "positive and unique"),
        ({"centres": [(torch.tensor([2, 2]), torch.zeros(2, 2))]}, "positive and unique"),
        ({"spacing": (1.0,)}, "spacing needs 2 positive values"),
    ],
)
def test_invalid_inputs_are_rejected(change: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "raw": torch.zeros(1, 5, 8, 8),
        "labels": torch.zeros(1, 8, 8, dtype=torch.long),
        "centres": [(torch.tensor([1]), torch.zeros(1, 2))],
    }
    spacing = change.pop("spacing", None)
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        embedseg_loss(**arguments, spacing=spacing, foreground_weight=1.0)
