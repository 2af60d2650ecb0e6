"""The foreground of the clustering on the host, and its pixels bucketed into a grid of cells.

The greedy loop of :mod:`embedseg_cli.method.clustering` needs, per seed, the foreground
pixels whose embedding lies within the support of the seed's Gaussian. Here the foreground is
compacted once (from numpy arrays, or from torch tensors on their device), and its embeddings
are bucketed into a uniform grid of cells sorted by cell, so that the pixels near a point in
embedding space are a few slices of one sorted array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import torch

__all__ = ["CellGrid", "Foreground", "cell_sizes", "compact_numpy", "compact_torch"]

# The cell size along each axis is this quantile of the seed candidates' support radii: most
# seeds then reach 2 or 3 cells per axis, the few wider ones visit more cells.
_CELL_QUANTILE = 0.9
# Upper bound on the number of cells of the grid, per foreground pixel: keeps the integer
# cell keys small when bandwidths are huge (tiny supports). Never affects the result.
_CELLS_PER_PIXEL = 64
# A seed whose support spans more cell rows than foreground pixels / _ROWS_PER_PIXEL (and more
# than _MIN_ROW_LIMIT) tests all the foreground pixels instead: that is cheaper.
_ROWS_PER_PIXEL = 16
_MIN_ROW_LIMIT = 64


@dataclass(frozen=True)
class Foreground:
    """The foreground pixels, compacted: all the greedy loop needs, on the host."""

    shape: tuple[int, ...]
    indices: NDArray[np.int64]  # flat index of each foreground pixel, increasing
    embedding: NDArray[np.floating[Any]]  # (ndim, n) embedding of each foreground pixel
    candidates: NDArray[np.int64]  # positions in `indices` of the pixels that may seed
    candidate_seed: NDArray[np.floating[Any]]  # (m,) their seed values
    candidate_bandwidth: NDArray[np.floating[Any]]  # (ndim, m) their bandwidths


def compact_numpy(
    embedding: NDArray[Any],
    bandwidth: NDArray[Any],
    seed: NDArray[Any],
    seed_mask: NDArray[Any] | None,
    foreground_threshold: float,
    seed_threshold: float,
) -> Foreground:
    """Select the foreground pixels of numpy maps and the seed candidates among them."""
    if not np.issubdtype(seed.dtype, np.floating):
        msg = f"the seed map must be floating point, got {seed.dtype}"
        raise ValueError(msg)
    ndim = seed.ndim
    flat_seed = seed.reshape(-1)
    # Thresholds are cast to the seed's dtype explicitly, as the torch path does.
    fg_threshold = np.asarray(foreground_threshold, dtype=seed.dtype)
    indices = np.flatnonzero(flat_seed > fg_threshold).astype(np.int64, copy=False)
    values = flat_seed[indices]
    flat_embedding = embedding.reshape(ndim, -1)
    fg_embedding = np.stack([flat_embedding[k][indices] for k in range(ndim)])
    can_seed = values >= np.asarray(seed_threshold, dtype=seed.dtype)
    if seed_mask is not None:
        can_seed &= seed_mask.reshape(-1)[indices].astype(bool, copy=False)
    candidates = np.flatnonzero(can_seed).astype(np.int64, copy=False)
    flat_bandwidth = bandwidth.reshape(ndim, -1)
    seed_pixels = indices[candidates]
    return Foreground(
        shape=tuple(seed.shape),
        indices=indices,
        embedding=fg_embedding,
        candidates=candidates,
        candidate_seed=values[candidates],
        candidate_bandwidth=np.stack([flat_bandwidth[k][seed_pixels] for k in range(ndim)]),
    )


def compact_torch(
    embedding: NDArray[Any] | torch.Tensor,
    bandwidth: NDArray[Any] | torch.Tensor,
    seed: NDArray[Any] | torch.Tensor,
    seed_mask: NDArray[Any] | torch.Tensor | None,
    foreground_threshold: float,
    seed_threshold: float,
) -> Foreground:
    """Select the foreground of tensors on their device; copy only it to the host."""
    import torch  # noqa: PLC0415 (only reached when the caller passed tensors)

    inputs = (embedding, bandwidth, seed, seed_mask)
    device = next(x.device for x in inputs if isinstance(x, torch.Tensor))
    with torch.no_grad():
        seed_t = torch.as_tensor(seed, device=device).detach()
        if not seed_t.is_floating_point():
            msg = f"the seed map must be floating point, got {seed_t.dtype}"
            raise ValueError(msg)
        ndim = seed_t.dim()
        emb_t = torch.as_tensor(embedding, device=device).detach().reshape(ndim, -1)
        bw_t = torch.as_tensor(bandwidth, device=device).detach().reshape(ndim, -1)
        flat_seed = seed_t.reshape(-1)
        fg_threshold = torch.tensor(foreground_threshold, dtype=seed_t.dtype, device=device)
        indices = torch.nonzero(flat_seed > fg_threshold).squeeze(1)
        values = flat_seed[indices]
        can_seed = values >= torch.tensor(seed_threshold, dtype=seed_t.dtype, device=device)
        if seed_mask is not None:
            mask_t = torch.as_tensor(seed_mask, device=device).reshape(-1)
            can_seed &= mask_t[indices].bool()
        candidates = torch.nonzero(can_seed).squeeze(1)
        fg_embedding = emb_t[:, indices]
        candidate_bandwidth = bw_t[:, indices[candidates]]
        # numpy knows no bfloat16; upcasting a half-precision value to float32 is exact.
        if fg_embedding.dtype in (torch.float16, torch.bfloat16):
            fg_embedding = fg_embedding.float()
            candidate_bandwidth = candidate_bandwidth.float()
        candidate_seed = values[candidates]
        if candidate_seed.dtype in (torch.float16, torch.bfloat16):
            candidate_seed = candidate_seed.float()
        return Foreground(
            shape=tuple(seed_t.shape),
            indices=indices.cpu().numpy().astype(np.int64, copy=False),
            embedding=fg_embedding.cpu().numpy(),
            candidates=candidates.cpu().numpy().astype(np.int64, copy=False),
            candidate_seed=candidate_seed.cpu().numpy(),
            candidate_bandwidth=candidate_bandwidth.cpu().numpy(),
        )


def cell_sizes(
    radii: NDArray[np.float64], extent: NDArray[np.float64], n_pixels: int
) -> NDArray[np.float64]:
    """Cell size along each axis: a high quantile of the support radii, never too small."""
    ndim = len(extent)
    sizes = np.empty(ndim, dtype=np.float64)
    for k in range(ndim):
        finite = radii[k][np.isfinite(radii[k])]
        quantile = float(np.quantile(finite, _CELL_QUANTILE)) if finite.size else 0.0
        # Without a finite radius, or with a degenerate one, a single cell spans the axis.
        sizes[k] = quantile if quantile > 0.0 else float(extent[k]) + 1.0
    max_cells = max(_CELLS_PER_PIXEL * n_pixels, 4096)
    n_cells = float(np.prod(extent / sizes + 1.0))
    if n_cells > max_cells:
        sizes *= (n_cells / max_cells) ** (1.0 / ndim) * (1.0 + 1e-9)
    return sizes


def _concatenate_ranges(
    starts: NDArray[np.int64], stops: NDArray[np.int64]
) -> NDArray[np.int64] | slice:
    """``concatenate([arange(a, b) for a, b in zip(starts, stops)])``, vectorised."""
    lengths = stops - starts
    keep = lengths > 0
    if np.count_nonzero(keep) <= 1:
        return slice(int(starts[keep][0]), int(stops[keep][0])) if keep.any() else slice(0, 0)
    starts, lengths = starts[keep], lengths[keep]
    # Each output value is its range's start plus its position within the range.
    shift = starts - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


class CellGrid:
    """The foreground pixels bucketed by embedding into a uniform grid, sorted by cell.

    Cells are numbered in C order, so the cells of one row along the last axis are
    consecutive, and so are their pixels once sorted: a box of cells is one slice of the
    sorted pixels per row.
    """

    def __init__(
        self,
        embedding: NDArray[np.floating[Any]],
        low: list[float],
        high: list[float],
        cell: list[float],
    ) -> None:
        ndim, n = embedding.shape
        self.low, self.cell = low, cell
        # The cell of the largest embedding: the same float64 operations as for every pixel.
        self.top = [math.floor((high[k] - low[k]) / cell[k]) for k in range(ndim)]
        self.strides = [1] * ndim
        for k in range(ndim - 2, -1, -1):
            self.strides[k] = self.strides[k + 1] * (self.top[k + 1] + 1)
        # One axis at a time: temporaries of one value per pixel, not ndim.
        keys = np.zeros(n, dtype=np.int64)
        for k in range(ndim):
            scaled = embedding[k].astype(np.float64)
            scaled -= low[k]
            scaled /= cell[k]
            cells = np.floor(scaled, out=scaled).astype(np.int64)
            if self.strides[k] != 1:
                cells *= self.strides[k]
            keys += cells
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        self.embedding = [embedding[k][self.order].astype(np.float64) for k in range(ndim)]
        # A box spanning more rows than this is slower than testing every pixel.
        self.row_limit = max(n // _ROWS_PER_PIXEL, _MIN_ROW_LIMIT)
        self.n = n

    def near(self, centre: list[float], radius: list[float]) -> NDArray[np.int64] | slice:
        """Sorted positions of every pixel whose embedding may lie within ``radius``.

        A superset of the pixels with ``|e_k - centre_k| < radius_k`` along every axis:
        the radius is widened a little so that float rounding can never leave one out.
        """
        first, last = [], []
        rows = 1
        for k, (c, r) in enumerate(zip(centre, radius, strict=True)):
            reach = r * (1.0 + 1e-6) + 1e-9 * (1.0 + abs(c))
            a = (c - reach - self.low[k]) / self.cell[k]
            b = (c + reach - self.low[k]) / self.cell[k]
            first.append(0 if a <= 0.0 else min(int(a), self.top[k]))
            last.append(self.top[k] if b >= self.top[k] else max(int(b), 0))
            if k < len(centre) - 1:
                rows *= last[k] - first[k] + 1
        if rows > self.row_limit:
            return slice(0, self.n)
        bases = reduce(
            np.add.outer,
            [np.arange(first[k], last[k] + 1) * self.strides[k] for k in range(len(centre) - 1)],
            np.zeros((), dtype=np.int64),
        ).reshape(-1)
        bounds = np.searchsorted(
            self.keys, np.concatenate((bases + first[-1], bases + last[-1] + 1))
        )
        return _concatenate_ranges(bounds[: len(bases)], bounds[len(bases) :])
