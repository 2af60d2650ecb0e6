"""The EmbedSeg training loss (Lalit et al. 2021, Appendix A; Neven et al. 2019).

For every instance ``k`` of a crop, with centre ``C_k`` and pixel set ``S_k``:

- bandwidth: ``sbar_k`` is the mean raw sigma over ``S_k`` (per axis) and
  ``s_k = exp(10 * sbar_k)``;
- membership: ``phi_k(p) = exp(-sum_a s_ka (e_a(p) - C_ka)^2)`` with the embeddings of
  :func:`embedseg_cli.method.model.embed`;
- instance term: the Lovász hinge of the logits ``2 phi_k - 1`` against the mask of ``S_k``;
- variance term: the mean over ``S_k`` and the axes of ``(sigma - sbar_k.detach())^2``;
- seed term: ``foreground_weight * sum_{S_k} (seed - phi_k.detach())^2`` plus
  ``sum_background seed^2``.

As in the original implementation, the instance and variance terms are averaged over the
instances of a crop, the seed term is divided by the number of pixels of the crop, the crop
loss is ``w_inst * instance + w_var * variance + w_seed * seed`` and the batch loss is the mean
over the crops.

Coordinates. Centres are given in pixel coordinates of the crop (a whole-object medoid may
lie outside the crop). The loss depends on embeddings only through ``e(p) - C``, in which the
crop's position in the whole image cancels exactly::

    (origin + p) * a / R + tanh(o) - (origin + c) * a / R = (p - c) * a / R + tanh(o)

so the loss needs no origin, and computing the difference this way keeps float32 accurate
for crops far from the image origin. Training with this loss is training whole-image
embeddings: :func:`~embedseg_cli.method.model.embed` with the crop's origin gives the embeddings
the loss has shaped.

Windowing: why it is fast and why it is exact. The original evaluates ``phi_k`` and sorts
the whole crop for every instance. Here the Lovász hinge of instance ``k`` sorts only the pixels
that can count: the pixels of ``S_k`` and the negatives whose reach
``x = sum_a s_ka (e_a - C_ka)^2`` is below a cutoff ``X_k``. Leaving out the other negatives
is exact because of two properties of the hinge (errors sorted in decreasing order, the
``i``-th weighted by the Jaccard-loss increment ``J(i) - J(i-1)``, which depends only on the
labels sorted before it):

a. A negative sorted after the last positive has weight 0: once every positive is passed the
   Jaccard loss of the prefix is 1 and stays 1. A negative whose error ``2 phi`` is below the
   smallest positive error ``2 - 2 phi_max`` (``phi_max``: the largest ``phi_k`` over ``S_k``)
   sorts there, so every negative with ``phi < 0.999 (1 - phi_max)`` adds exactly nothing to
   the loss and to the gradient (0.999 absorbs rounding).
b. A negative with a tiny error moves the loss by at most that error: the weights lie in
   [0, 1], and setting a tiny error to 0 only moves the pixel behind the others without
   changing their weights. For ``x >= T_k = 40 + 5 max(0, max_a sbar_ka)``, ``phi`` is below
   ``exp(-40) = 4.2e-18``: the loss moves by less than ``1e-17`` per pixel, the gradient by
   less than ``2 sqrt(s x) exp(-x)`` (offsets) and ``10 x exp(-x)`` (sigmas) per pixel, which
   the ``5 max(sbar)`` keeps below ``1e-16`` for any bandwidth; and a positive whose error is
   that small has ``phi`` rounded to 1 (error 0, zero gradient) even in float64, so no other
   pixel changes rank.

So ``X_k = min(T_k, -log(0.999 (1 - phi_max)))``. Rule (a) shrinks the windows as soon as
training has started (with ``phi_max = 0.9999``, ``X_k = 9.2`` instead of 40). Finding the
window must not cost a pass over the crop per instance, and offsets are bounded by ``tanh``
only to ``R`` pixels, so no fixed spatial window is exact: the window comes from the data. The
crop is cut into blocks (8 x 8 pixels in 2D, 4 x 8 x 8 in 3D) and the bounding box of the
embeddings of each block is computed once per crop (``O(N)``). A block joins the window of
instance ``k`` if the smallest reach over its box is below ``X_k`` or if it holds a pixel of
``S_k`` (``O(K N / 64)`` tests); the pixels of those blocks are tested one by one, and the
positives and near negatives of all the instances of the batch are packed into one padded
matrix, one row per instance, and sorted at once. The work is ``O(N)`` per crop plus the
windows: small once objects are learnt, close to the original's only while the Gaussians are
as wide as the crop (very small bandwidths; or the first step, where the centre pixel has
``phi = 1`` exactly and only rule (b) applies). The result equals the whole-crop loss up to
rounding (the tests compare both to 1e-5, gradients included).

Float32 underflow: reaches are clamped at 80 before ``exp`` (``exp(-80)`` is still a normal
float32; denormals are slow on CPUs), which changes ``phi`` by less than ``2e-35``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from embedseg_cli.method.heads import (
    BANDWIDTH_GAIN,
    EMBEDDING_SCALE,
    bandwidth_of,
    offsets_of,
    seediness_of,
)
from embedseg_cli.method.model import output_channels

__all__ = ["embedseg_loss", "lovasz_hinge_rows"]

# exp(-40) = 4.2e-18 is below half an ulp of 1.0 in float64, so a positive pixel whose
# error is smaller than that of an excluded pixel has phi == 1 exactly (see the docstring).
_CUTOFF = 40.0
# Block extents along (Y, X) and (Z, Y, X): the granularity of the windows.
_BLOCKS = {2: (8, 8), 3: (4, 8, 8)}
_PADDING_ERROR = -1.0
# A negative whose error is below this fraction of every positive's error has weight 0.
_LAST_POSITIVE_MARGIN = 0.999
_PADDING_INDEX = -2
# exp(-80) is still a normal float32; larger reaches would give slow denormals.
_REACH_MAX = 80.0


def lovasz_hinge_rows(errors: Tensor, positives: Tensor) -> Tensor:
    """Lovász hinge of each row of a padded matrix of hinge errors.

    Parameters
    ----------
    errors : Tensor of shape (K, M)
        Hinge errors ``1 - logit * sign`` of each row's pixels. Padding entries must be
        negative (and not positive): they sort behind every real entry and contribute 0.
    positives : Tensor of shape (K, M)
        1 where the pixel belongs to the row's object, 0 elsewhere (and on padding). Every
        row needs at least one positive.

    Returns
    -------
    Tensor of shape (K,)
        ``sum_i relu(e_(i)) * (J(i) - J(i-1))`` per row, with ``e_(i)`` the errors sorted in
        decreasing order and ``J(i)`` the Jaccard loss of the ``i`` largest errors (Berman et
        al. 2018).

    Examples
    --------
    >>> errors = torch.tensor([[1.5, 0.5, 1.0, -1.0]])
    >>> positives = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    >>> lovasz_hinge_rows(errors, positives)
    tensor([1.2500])
    """
    ordered, order = torch.sort(errors, dim=1, descending=True)
    with torch.no_grad():
        labels = positives.to(ordered.dtype).gather(1, order)
        total = labels.sum(dim=1, keepdim=True)
        intersection = total - labels.cumsum(dim=1)
        union = total + (1.0 - labels).cumsum(dim=1)
        jaccard = 1.0 - intersection / union
        weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(ordered) * weights).sum(dim=1)


def _unravel(flat: Tensor, shape: Sequence[int]) -> Tensor:
    coordinates = []
    for size in reversed(shape):
        coordinates.append(flat % size)
        flat = flat // size
    return torch.stack(coordinates[::-1], dim=-1)


def _pixel_instances(
    labels: Tensor, centres: Sequence[tuple[Tensor, Tensor]], ndim: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per pixel the index of its instance in the batch-wide list of given instances, or -1.

    Returns the index map ``(B, N)``, the batch item of each instance and the centres.
    """
    batch = labels.shape[0]
    if len(centres) != batch:
        msg = f"centres must hold one (ids, centres) pair per batch item ({batch}), got {len(centres)}"
        raise ValueError(msg)
    index = torch.full_like(labels, -1)
    items, points = [], []
    first = 0
    for b, (given_ids, given_centres) in enumerate(centres):
        ids = torch.as_tensor(given_ids, device=labels.device).long().reshape(-1)
        centre = torch.as_tensor(given_centres, device=labels.device, dtype=torch.float64)
        if centre.shape != (len(ids), ndim):
            msg = (
                f"batch item {b}: centres must have shape ({len(ids)}, {ndim}) for {len(ids)} "
                f"ids (got {tuple(centre.shape)})"
            )
            raise ValueError(msg)
        if len(ids) == 0:
            continue
        if bool((ids <= 0).any()) or len(torch.unique(ids)) != len(ids):
            msg = f"batch item {b}: instance ids must be positive and unique (got {ids.tolist()})"
            raise ValueError(msg)
        sorted_ids, order = torch.sort(ids)
        position = torch.searchsorted(sorted_ids, labels[b]).clamp_(max=len(ids) - 1)
        found = sorted_ids[position] == labels[b]
        index[b] = torch.where(found, order[position] + first, -1)
        items.append(torch.full((len(ids),), b, dtype=torch.long, device=labels.device))
        points.append(centre)
        first += len(ids)
    if first == 0:
        empty = torch.zeros((0, ndim), dtype=torch.float64, device=labels.device)
        return index, torch.zeros(0, dtype=torch.long, device=labels.device), empty
    return index, torch.cat(items), torch.cat(points)


class _Blocks:
    """The crop cut into blocks: pixel arrays are re-laid block-major, ``(B, n_blocks, V, ...)``.

    The last blocks along an axis may stick out of the crop; their outside pixels are padding.
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.block = _BLOCKS[len(shape)]
        self.shape = shape
        self.grid = tuple(-(-size // step) for size, step in zip(shape, self.block, strict=True))
        self.n_blocks = math.prod(self.grid)
        self.volume = math.prod(self.block)
        steps = torch.tensor(self.block, dtype=dtype, device=device)
        self.corner = _unravel(torch.arange(self.n_blocks, device=device), self.grid).to(dtype)
        self.corner = self.corner * steps
        self.local = _unravel(torch.arange(self.volume, device=device), self.block).to(dtype)

    def split(self, values: Tensor, fill: float) -> Tensor:
        """``(B, C, *S)`` to ``(B, n_blocks, V, C)``, padding with ``fill``."""
        ndim = len(self.shape)
        padding: list[int] = []
        for size, n, step in zip(self.shape, self.grid, self.block, strict=True):
            padding = [0, n * step - size, *padding]
        padded = F.pad(values, padding, value=fill)
        interleaved = [values.shape[0], values.shape[1]]
        for n, step in zip(self.grid, self.block, strict=True):
            interleaved += [n, step]
        order = [0, *range(2, 2 + 2 * ndim, 2), *range(3, 3 + 2 * ndim, 2), 1]
        blocks = padded.reshape(interleaved).permute(order)
        return blocks.reshape(values.shape[0], self.n_blocks, self.volume, values.shape[1])


def embedseg_loss(
    raw: Tensor,
    labels: Tensor,
    centres: Sequence[tuple[Tensor, Tensor]],
    *,
    foreground_weight: float,
    spacing: Sequence[float] | None = None,
    scale: float = EMBEDDING_SCALE,
    w_inst: float = 1.0,
    w_var: float = 10.0,
    w_seed: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """EmbedSeg loss of a batch of crops (see the module docstring for the terms).

    Parameters
    ----------
    raw : Tensor of shape (B, 2 * d + 1, *S)
        Raw network outputs: ``d`` offsets, ``d`` sigmas, seed.
    labels : Tensor of shape (B, *S)
        Integer instance labels of the crops, 0 for background. Pixels whose label is neither
        0 nor one of the given ids count as outside every instance in the instance terms and
        are left out of the seed term.
    centres : sequence of (ids, centres) pairs, one per batch item
        ``ids`` of shape (n,): positive, unique label values; ``centres`` of shape (n, d): the
        centre of each of these instances in pixel coordinates of the crop (it may lie outside
        the crop). Ids without a pixel in the crop are skipped.
    foreground_weight : float
        Weight of the seed regression on instance pixels (10 in 2D, the background /
        foreground ratio in 3D).
    spacing : sequence of float, optional
        Pixel spacing per axis relative to x (``(anisotropy, 1, 1)`` in 3D). Default: 1.
    scale : float
        Embedding scale ``R`` in pixels per unit, as used by :func:`~embedseg_cli.method.model.embed`.
    w_inst, w_var, w_seed : float
        Weights of the instance (Lovász), variance and seed terms.

    Returns
    -------
    loss : Tensor
        The scalar batch loss.
    terms : dict of str to Tensor
        ``"instance"``, ``"variance"`` and ``"seed"``: each term's batch mean, unweighted.

    Examples
    --------
    >>> labels = torch.zeros(1, 16, 16, dtype=torch.long)
    >>> labels[0, 4:9, 4:9] = 1
    >>> raw = torch.zeros(1, 5, 16, 16, requires_grad=True)
    >>> centres = [(torch.tensor([1]), torch.tensor([[6.0, 6.0]]))]
    >>> loss, terms = embedseg_loss(raw, labels, centres, foreground_weight=10.0)
    >>> loss.backward()
    >>> sorted(terms)
    ['instance', 'seed', 'variance']
    """
    ndim = raw.dim() - 2
    if ndim not in (2, 3) or raw.shape[1] != output_channels(ndim):
        msg = f"raw must have shape (B, 5, Y, X) or (B, 7, Z, Y, X) (got {tuple(raw.shape)})"
        raise ValueError(msg)
    if labels.shape != raw.shape[:1] + raw.shape[2:]:
        msg = (
            f"labels must have shape {tuple(raw.shape[:1] + raw.shape[2:])} to match raw "
            f"{tuple(raw.shape)} (got {tuple(labels.shape)})"
        )
        raise ValueError(msg)
    steps = (1.0,) * ndim if spacing is None else tuple(float(a) for a in spacing)
    if len(steps) != ndim or any(not a > 0 for a in steps) or not scale > 0:
        msg = f"spacing needs {ndim} positive values and scale must be positive"
        raise ValueError(msg)
    batch, shape = raw.shape[0], tuple(raw.shape[2:])
    n_pixels = math.prod(shape)
    dtype, device = raw.dtype, raw.device
    unit = torch.tensor(steps, dtype=dtype, device=device) / scale

    flat_labels = labels.reshape(batch, n_pixels).long()
    index, item, centre = _pixel_instances(flat_labels, centres, ndim)
    # Pixel-major views: row b * N + p holds pixel p of item b.
    tanh_offsets = offsets_of(raw[:, :ndim])
    offsets = tanh_offsets.reshape(batch, ndim, n_pixels).transpose(1, 2).reshape(-1, ndim)
    sigma = raw[:, ndim : 2 * ndim].reshape(batch, ndim, n_pixels).transpose(1, 2)
    sigma = sigma.reshape(-1, ndim)
    seed = seediness_of(raw[:, 2 * ndim]).reshape(-1)
    index = index.reshape(-1)

    # Keep the instances that have pixels in their crop, renumbered 0..K-1.
    counts = torch.bincount(index[index >= 0], minlength=len(item))
    present = counts > 0
    if len(item):
        renumber = torch.cumsum(present.long(), 0) - 1
        index = torch.where(index >= 0, renumber[index.clamp(min=0)], -1)
    item, centre, counts = item[present], centre[present].to(dtype), counts[present]
    n_instances = len(item)

    background = flat_labels.reshape(-1) == 0
    seed_sum = (torch.where(background, seed, 0.0) ** 2).reshape(batch, n_pixels).sum(dim=1)
    instance_term = torch.zeros(batch, dtype=dtype, device=device)
    variance_term = torch.zeros(batch, dtype=dtype, device=device)

    if n_instances > 0:
        inside = (index >= 0).nonzero().squeeze(1)
        owner = index[inside]
        size = counts.to(dtype)[:, None]
        sigma_in = sigma.index_select(0, inside)
        mean_sigma = torch.zeros(n_instances, ndim, dtype=dtype, device=device)
        mean_sigma = mean_sigma.index_add(0, owner, sigma_in) / size
        spread = ((sigma_in - mean_sigma.detach()[owner]) ** 2).sum(dim=1)
        variance = torch.zeros(n_instances, dtype=dtype, device=device).index_add(
            0, owner, spread
        ) / (size[:, 0] * ndim)
        bandwidth = bandwidth_of(mean_sigma)

        coordinates = _unravel(inside % n_pixels, shape).to(dtype)
        distance = (coordinates - centre[owner]) * unit + offsets.index_select(0, inside)
        reach_in = (bandwidth.index_select(0, owner) * distance**2).sum(dim=1)
        phi_in = torch.exp(-reach_in.clamp(max=_REACH_MAX))
        seed_sum = seed_sum.index_add(
            0,
            inside // n_pixels,
            foreground_weight * (seed.index_select(0, inside) - phi_in.detach()) ** 2,
        )

        # Negatives whose reach is beyond `cutoff` do not count (module docstring, a and b).
        with torch.no_grad():
            tail = _CUTOFF + 0.5 * BANDWIDTH_GAIN * mean_sigma.amax(dim=1).clamp(min=0)
            best = torch.zeros(n_instances, dtype=dtype, device=device).scatter_reduce(
                0, owner, phi_in, "amax", include_self=False
            )
            cutoff = torch.minimum(tail, -torch.log(_LAST_POSITIVE_MARGIN * (1.0 - best)))
        hinge = _instance_hinge(
            tanh_offsets, index.reshape(batch, *shape), item, centre, bandwidth, cutoff, unit
        )
        per_item = torch.bincount(item, minlength=batch).clamp(min=1).to(dtype)
        instance_term = instance_term.index_add(0, item, hinge) / per_item
        variance_term = variance_term.index_add(0, item, variance) / per_item

    seed_term = seed_sum / n_pixels
    total = w_inst * instance_term + w_var * variance_term + w_seed * seed_term
    terms = {
        "instance": instance_term.mean(),
        "variance": variance_term.mean(),
        "seed": seed_term.mean(),
    }
    return total.mean(), terms


def _instance_hinge(
    offsets: Tensor,
    index: Tensor,
    item: Tensor,
    centre: Tensor,
    bandwidth: Tensor,
    cutoff: Tensor,
    unit: Tensor,
) -> Tensor:
    """Lovász hinge of every instance over its window (module docstring), shape (K,).

    ``offsets`` are ``tanh`` offsets ``(B, d, *S)``, ``index`` the instance of each pixel
    ``(B, *S)`` (-1 outside every given instance); negatives whose reach
    ``sum_a s_a (e_a - C_a)^2`` is at least ``cutoff`` (K,) are left out.
    """
    n_instances = len(item)
    dtype, device = offsets.dtype, offsets.device
    blocks = _Blocks(tuple(offsets.shape[2:]), dtype, device)
    block_offsets = blocks.split(offsets, 0.0)
    block_index = blocks.split(index[:, None], _PADDING_INDEX)[..., 0]
    with torch.no_grad():
        # Bounding box of the crop-relative embeddings of each block.
        embedding = (blocks.corner[:, None, :] + blocks.local[None]) * unit + block_offsets
        padding = (block_index == _PADDING_INDEX)[..., None]
        lower = embedding.masked_fill(padding, math.inf).amin(dim=2)
        upper = embedding.masked_fill(padding, -math.inf).amax(dim=2)
        target = (centre * unit)[:, None, :]
        gap = F.relu(lower[item] - target) + F.relu(target - upper[item])
        candidates = (bandwidth[:, None, :] * gap**2).sum(dim=2) < cutoff[:, None]
        # Every block holding a pixel of the instance joins its window.
        owned = (block_index >= 0).nonzero()
        candidates[block_index[owned[:, 0], owned[:, 1], owned[:, 2]], owned[:, 1]] = True
        instance, block = candidates.nonzero().unbind(dim=1)
        pixel_index = block_index[item[instance], block]
        positive = pixel_index == instance[:, None]

    coordinates = blocks.corner[block][:, None, :] + blocks.local[None]
    # index_select, not advanced indexing: its backward is a fast index_add.
    pair_offsets = block_offsets.reshape(-1, blocks.volume, offsets.shape[1]).index_select(
        0, item[instance] * blocks.n_blocks + block
    )
    distance = (coordinates - centre[instance][:, None, :]) * unit + pair_offsets
    reach = (bandwidth.index_select(0, instance)[:, None, :] * distance**2).sum(dim=2)
    with torch.no_grad():
        # The positives and the near negatives: the only pixels that can count (module
        # docstring), packed into one row per instance (pairs come grouped by instance).
        near = (reach < cutoff[instance][:, None]) & (pixel_index != _PADDING_INDEX)
        kept = (positive | near).reshape(-1).nonzero().squeeze(1)
        row = instance[kept // blocks.volume]
        counts = torch.bincount(row, minlength=n_instances)
        column = torch.arange(len(kept), device=device) - (counts.cumsum(0) - counts)[row]
        kept_positive = positive.reshape(-1)[kept]
    phi = torch.exp(-reach.reshape(-1).index_select(0, kept).clamp(max=_REACH_MAX))
    # Hinge errors of the logits 2 phi - 1: 2 - 2 phi on the instance, 2 phi elsewhere.
    error = torch.where(kept_positive, 2.0 - 2.0 * phi, 2.0 * phi)
    shape = (n_instances, int(counts.max()))
    errors = torch.full(shape, _PADDING_ERROR, dtype=dtype, device=device)
    errors = errors.index_put((row, column), error)
    positives = torch.zeros(shape, dtype=dtype, device=device)
    positives[row, column] = kept_positive.to(dtype)
    return lovasz_hinge_rows(errors, positives)
