"""Greedy clustering of pixel embeddings into instances, as in EmbedSeg, in near-linear time.

The network predicts, for every pixel ``p``, an embedding ``e(p)`` (its position plus a
learnt offset), a bandwidth ``s(p)`` per axis and a seed score in ``[0, 1]``. Instances are
found greedily, exactly as the original does (with one defect fixed, see below):

1. the foreground is ``seed > foreground_threshold``;
2. the unclustered foreground pixel with the highest seed (ties: the lowest flat index) starts
   a proposal, unless its seed is below ``seed_threshold``, which ends the loop. It is marked
   clustered at once;
3. the proposal is every foreground pixel (clustered or not) whose membership
   ``phi(p) = exp(-sum_k s_k (e_k(p) - c_k)^2)`` exceeds ``membership_threshold``, where
   ``c`` and ``s`` are the embedding and the bandwidth *of the seed pixel*;
4. it is accepted as the next instance if it has more than ``min_object_size`` pixels and
   more than ``min_unclustered_fraction`` of them are still unclustered (the seed pixel
   counts as clustered already, as in the original);
5. all its pixels are marked clustered, accepted or not; repeat from 2.

The original lets a later instance overwrite the labels of an earlier one; here a pixel keeps
the label of the first accepted instance that contains it.

The original tests every foreground pixel for every seed, O(seeds x foreground). Here the
embeddings are bucketed once into a uniform grid of cells, and a seed only tests the pixels
of the cells that its Gaussian's support can reach: ``phi > t`` implies
``|e_k - c_k| < sqrt(-ln(t) / s_k)`` along every axis. The result is the same pixel for
pixel, and the work is one sort of the foreground plus, per seed, the pixels near it in
embedding space.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.method.cells import CellGrid, Foreground, cell_sizes, compact_numpy, compact_torch

if TYPE_CHECKING:
    import torch

__all__ = ["ClusterResult", "cluster_seeds", "find_instances", "find_instances_foreground"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterResult:
    """Instances found by the greedy clustering.

    Attributes
    ----------
    labels : ndarray of shape (Y, X) or (Z, Y, X), uint32
        Instance labels ``1, 2, ...`` in the order the instances were accepted; 0 elsewhere.
    seeds : ndarray of shape (n_instances, ndim), int64
        Pixel coordinates of the seed that started each instance; row ``i`` is label ``i + 1``.
    rejected : int
        Number of seeds whose proposal was rejected (too small or mostly clustered already).
    """

    labels: NDArray[np.uint32]
    seeds: NDArray[np.int64]
    rejected: int

    def __len__(self) -> int:
        return len(self.seeds)


def cluster_seeds(
    embedding: NDArray[np.floating[Any]] | torch.Tensor,
    bandwidth: NDArray[np.floating[Any]] | torch.Tensor,
    seed: NDArray[np.floating[Any]] | torch.Tensor,
    *,
    foreground_threshold: float = 0.5,
    seed_threshold: float = 0.9,
    membership_threshold: float = 0.5,
    min_object_size: int = 0,
    min_unclustered_fraction: float = 0.5,
    seed_mask: NDArray[np.bool_] | torch.Tensor | None = None,
) -> NDArray[np.uint32]:
    """Label image of the instances found by the greedy clustering.

    The same as ``find_instances(...).labels``; see :func:`find_instances` for the
    parameters.

    Examples
    --------
    Two groups of pixels whose embeddings point at two different centres:

    >>> seed = np.array([[0.0, 0.95, 0.7, 0.7, 0.0, 0.7, 0.92, 0.6]], dtype=np.float32)
    >>> embedding = np.zeros((2, 1, 8), dtype=np.float32)
    >>> embedding[1] = [0.0, 0.1, 0.1, 0.1, 0.0, 0.5, 0.5, 0.5]
    >>> bandwidth = np.full((2, 1, 8), 1000.0, dtype=np.float32)
    >>> cluster_seeds(embedding, bandwidth, seed).tolist()
    [[0, 1, 1, 1, 0, 2, 2, 2]]
    """
    return find_instances(
        embedding,
        bandwidth,
        seed,
        foreground_threshold=foreground_threshold,
        seed_threshold=seed_threshold,
        membership_threshold=membership_threshold,
        min_object_size=min_object_size,
        min_unclustered_fraction=min_unclustered_fraction,
        seed_mask=seed_mask,
    ).labels


def find_instances(
    embedding: NDArray[np.floating[Any]] | torch.Tensor,
    bandwidth: NDArray[np.floating[Any]] | torch.Tensor,
    seed: NDArray[np.floating[Any]] | torch.Tensor,
    *,
    foreground_threshold: float = 0.5,
    seed_threshold: float = 0.9,
    membership_threshold: float = 0.5,
    min_object_size: int = 0,
    min_unclustered_fraction: float = 0.5,
    seed_mask: NDArray[np.bool_] | torch.Tensor | None = None,
) -> ClusterResult:
    """Greedy clustering of embeddings into instances, with the seed of each instance.

    Inputs are numpy arrays or torch tensors on any device; the result is the same, bit for
    bit, and always on the host. With tensors, the foreground is selected on their device
    and only the foreground pixels are copied to the host, where the sequential greedy loop
    runs (it is latency-bound: per seed it touches a few thousand pixels, which would cost
    more in kernel launches and device synchronisations than in arithmetic). The device
    only compares and gathers, which is exact; all arithmetic runs on the host in float64.

    Parameters
    ----------
    embedding : array or tensor of shape (ndim, Y, X) or (ndim, Z, Y, X)
        Embedding of every pixel, in the units the bandwidth refers to.
    bandwidth : array or tensor of the same shape as ``embedding``
        Bandwidth ``s`` of every pixel (``exp(10 * raw_sigma)``), non-negative and not NaN
        where it is used (at the seed candidates); an infinite one (overflow) claims no pixel.
    seed : array or tensor of shape (Y, X) or (Z, Y, X)
        Seed score in ``[0, 1]`` (after the sigmoid); floating point. The foreground and
        seed thresholds are compared in its dtype.
    foreground_threshold : float
        Pixels whose seed is above this are foreground; only they are clustered.
    seed_threshold : float
        The loop ends when the highest unclustered seed is below this.
    membership_threshold : float
        A pixel joins a proposal where its membership ``phi`` is above this; in ``(0, 1)``.
        The test is evaluated as ``sum_k s_k (e_k - c_k)^2 < -ln(threshold)`` in float64.
    min_object_size : int
        A proposal needs more than this many pixels to be accepted.
    min_unclustered_fraction : float
        A proposal needs more than this fraction of unclustered pixels to be accepted.
    seed_mask : bool array or tensor of shape (Y, X) or (Z, Y, X), optional
        Only pixels where this is True may start an instance; others can still join one.

    Returns
    -------
    ClusterResult
        The uint32 label image, the seed coordinates of the instances and the number of
        rejected proposals.

    Raises
    ------
    ValueError
        If shapes or thresholds are inconsistent, or an embedding or bandwidth that the
        clustering uses is not finite (or a bandwidth is negative or NaN).

    Examples
    --------
    >>> seed = np.array([[0.0, 0.95, 0.7, 0.7, 0.0, 0.7, 0.92, 0.6]], dtype=np.float32)
    >>> embedding = np.zeros((2, 1, 8), dtype=np.float32)
    >>> embedding[1] = [0.0, 0.1, 0.1, 0.1, 0.0, 0.5, 0.5, 0.5]
    >>> bandwidth = np.full((2, 1, 8), 1000.0, dtype=np.float32)
    >>> result = find_instances(embedding, bandwidth, seed)
    >>> result.labels.tolist(), result.seeds.tolist(), result.rejected
    ([[0, 1, 1, 1, 0, 2, 2, 2]], [[0, 1], [0, 6]], 0)
    """
    _check_parameters(membership_threshold, min_unclustered_fraction, min_object_size)
    _check_shapes(tuple(embedding.shape), tuple(bandwidth.shape), tuple(seed.shape), seed_mask)
    torch_module = sys.modules.get("torch")
    inputs = (embedding, bandwidth, seed, seed_mask)
    if torch_module is not None and any(isinstance(x, torch_module.Tensor) for x in inputs):
        foreground = compact_torch(
            embedding, bandwidth, seed, seed_mask, foreground_threshold, seed_threshold
        )
    else:
        foreground = compact_numpy(
            np.asarray(embedding),
            np.asarray(bandwidth),
            np.asarray(seed),
            None if seed_mask is None else np.asarray(seed_mask),
            foreground_threshold,
            seed_threshold,
        )
    return _greedy(
        foreground,
        limit=-math.log(membership_threshold),
        min_object_size=int(min_object_size),
        min_unclustered_fraction=float(min_unclustered_fraction),
    )


def find_instances_foreground(
    shape: Sequence[int],
    indices: NDArray[np.integer[Any]],
    embedding: NDArray[np.floating[Any]],
    seed: NDArray[np.floating[Any]],
    bandwidth: NDArray[np.floating[Any]],
    *,
    seed_threshold: float = 0.9,
    membership_threshold: float = 0.5,
    min_object_size: int = 0,
    min_unclustered_fraction: float = 0.5,
    seed_mask: NDArray[np.bool_] | None = None,
) -> ClusterResult:
    """:func:`find_instances` given only the foreground pixels, for callers that select them.

    Computing embeddings and bandwidths for the foreground alone costs a fraction of the
    time and memory of whole maps where most pixels are background. The result is the one
    :func:`find_instances` gives for maps that hold these values at these pixels.

    Parameters
    ----------
    shape : sequence of int
        Shape of the image (Y, X) or (Z, Y, X).
    indices : array of shape (n,)
        Flat (C-order) indices of the foreground pixels, increasing.
    embedding, bandwidth : arrays of shape (ndim, n)
        Embedding and bandwidth of each foreground pixel.
    seed : array of shape (n,)
        Seed score of each foreground pixel (floating point; compared in its dtype).
    seed_mask : bool array of shape ``shape``, optional
        Only pixels where this is True may start an instance.

    Other parameters are those of :func:`find_instances`.

    Examples
    --------
    >>> result = find_instances_foreground(
    ...     (1, 8),
    ...     np.array([1, 2, 3]),
    ...     np.zeros((2, 3), np.float32),
    ...     np.array([0.95, 0.7, 0.7], np.float32),
    ...     np.full((2, 3), 1000.0, np.float32),
    ... )
    >>> result.labels.tolist(), result.seeds.tolist()
    ([[0, 1, 1, 1, 0, 0, 0, 0]], [[0, 1]])
    """
    ndim = len(shape)
    n = len(indices)
    if embedding.shape != (ndim, n) or bandwidth.shape != (ndim, n) or seed.shape != (n,):
        msg = (
            f"embedding {embedding.shape}, bandwidth {bandwidth.shape} and seed {seed.shape} "
            f"must be ({ndim}, {n}), ({ndim}, {n}) and ({n},) for {n} foreground pixels"
        )
        raise ValueError(msg)
    if not np.issubdtype(seed.dtype, np.floating):
        msg = f"the seed values must be floating point, got {seed.dtype}"
        raise ValueError(msg)
    _check_parameters(membership_threshold, min_unclustered_fraction, min_object_size)
    flat_indices = np.asarray(indices, dtype=np.int64)
    can_seed = seed >= np.asarray(seed_threshold, dtype=seed.dtype)
    if seed_mask is not None:
        can_seed &= np.asarray(seed_mask).reshape(-1)[flat_indices].astype(bool, copy=False)
    candidates = np.flatnonzero(can_seed).astype(np.int64, copy=False)
    foreground = Foreground(
        shape=tuple(int(x) for x in shape),
        indices=flat_indices,
        embedding=embedding,
        candidates=candidates,
        candidate_seed=seed[candidates],
        candidate_bandwidth=bandwidth[:, candidates],
    )
    return _greedy(
        foreground,
        limit=-math.log(membership_threshold),
        min_object_size=int(min_object_size),
        min_unclustered_fraction=float(min_unclustered_fraction),
    )


def _check_parameters(
    membership_threshold: float, min_unclustered_fraction: float, min_object_size: int
) -> None:
    if not 0.0 < membership_threshold < 1.0:
        msg = f"membership_threshold must lie in (0, 1), got {membership_threshold}"
        raise ValueError(msg)
    if not 0.0 <= min_unclustered_fraction <= 1.0:
        msg = f"min_unclustered_fraction must lie in [0, 1], got {min_unclustered_fraction}"
        raise ValueError(msg)
    if min_object_size < 0:
        msg = f"min_object_size must be >= 0, got {min_object_size}"
        raise ValueError(msg)


def _check_shapes(
    embedding: tuple[int, ...],
    bandwidth: tuple[int, ...],
    seed: tuple[int, ...],
    seed_mask: NDArray[np.bool_] | torch.Tensor | None,
) -> None:
    if not seed:
        msg = "the seed map must have at least one axis"
        raise ValueError(msg)
    if embedding != (len(seed), *seed) or bandwidth != embedding:
        msg = (
            f"embedding {embedding} and bandwidth {bandwidth} must both have the shape "
            f"(ndim, *spatial) = {(len(seed), *seed)} of the seed map {seed}"
        )
        raise ValueError(msg)
    if seed_mask is not None and tuple(seed_mask.shape) != seed:
        msg = f"seed_mask has shape {tuple(seed_mask.shape)} but the seed map has {seed}"
        raise ValueError(msg)


def _greedy(
    foreground: Foreground,
    *,
    limit: float,
    min_object_size: int,
    min_unclustered_fraction: float,
) -> ClusterResult:
    shape = foreground.shape
    ndim = len(shape)
    n = len(foreground.indices)
    labels_image = np.zeros(math.prod(shape), dtype=np.uint32)
    if len(foreground.candidates) == 0:
        return ClusterResult(labels_image.reshape(shape), np.zeros((0, ndim), np.int64), 0)

    if not np.isfinite(foreground.embedding).all():
        msg = "the embedding is not finite at some foreground pixels"
        raise ValueError(msg)
    bandwidth = foreground.candidate_bandwidth.astype(np.float64)
    if np.isnan(bandwidth).any() or (bandwidth < 0).any():
        msg = "the bandwidth is negative or NaN at some seed candidates"
        raise ValueError(msg)
    # An infinite bandwidth (exp(10 * sigma) overflows float32 above sigma ~8.9, as early in
    # training) is a Gaussian of zero width: its proposal is empty and rejected.
    narrow = np.asarray(np.isinf(bandwidth).any(axis=0))
    with np.errstate(divide="ignore"):
        radii = np.sqrt(limit / bandwidth)  # of the support phi > threshold, per axis

    low = foreground.embedding.min(axis=1).astype(np.float64)
    high = foreground.embedding.max(axis=1).astype(np.float64)
    cell = cell_sizes(radii, high - low, n)
    grid = CellGrid(foreground.embedding, low.tolist(), high.tolist(), cell.tolist())
    position = np.empty(n, dtype=np.int64)
    position[grid.order] = np.arange(n, dtype=np.int64)
    # Seeds in processing order: decreasing seed value, ties by increasing flat index (the
    # candidates are in flat order and the sort is stable), as the original's argmax.
    order = np.argsort(-foreground.candidate_seed, kind="stable")
    seed_positions = position[foreground.candidates[order]].tolist()
    seed_narrow = narrow[order].tolist()
    seed_bandwidth = np.ascontiguousarray(bandwidth[:, order].T)
    seed_radii = np.ascontiguousarray(radii[:, order].T)
    sorted_embedding = grid.embedding

    clustered_bytes = bytearray(n)
    clustered = np.frombuffer(clustered_bytes, dtype=np.bool_)
    labels = np.zeros(n, dtype=np.uint32)
    accepted: list[int] = []
    rejected = 0
    for j, pos in enumerate(seed_positions):
        if clustered_bytes[pos]:
            continue
        clustered_bytes[pos] = 1
        if seed_narrow[j]:
            rejected += 1
            continue
        c = [float(axis[pos]) for axis in sorted_embedding]
        s = seed_bandwidth[j].tolist()
        members = grid.near(c, seed_radii[j].tolist())
        # The same float64 operations in the same order for every path and every pixel.
        diff = sorted_embedding[0][members] - c[0]
        distance = s[0] * (diff * diff)
        for k in range(1, ndim):
            diff = sorted_embedding[k][members] - c[k]
            distance += s[k] * (diff * diff)
        inside = distance < limit
        if isinstance(members, slice):
            proposal = np.flatnonzero(inside) + members.start
        else:
            proposal = members[inside]
        size = len(proposal)
        if size > min_object_size and (
            (size - np.count_nonzero(clustered[proposal])) / size > min_unclustered_fraction
        ):
            free = proposal[labels[proposal] == 0]
            labels[free] = len(accepted) + 1
            accepted.append(pos)
        else:
            rejected += 1
        clustered[proposal] = True

    # Back to flat order first: the scatter into the image is then sequential.
    labels_flat = np.empty(n, dtype=np.uint32)
    labels_flat[grid.order] = labels
    labels_image[foreground.indices] = labels_flat
    seed_indices = foreground.indices[grid.order[np.asarray(accepted, dtype=np.int64)]]
    seeds = np.stack(np.unravel_index(seed_indices, shape), axis=1).astype(np.int64)
    logger.debug(
        "clustered %d foreground pixels: %d instances, %d rejected seeds",
        n,
        len(accepted),
        rejected,
    )
    return ClusterResult(labels_image.reshape(shape), seeds.reshape(-1, ndim), rejected)
