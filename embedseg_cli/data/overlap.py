"""The sparse overlap of two label images: which objects share pixels, and how many.

Two label images of the same shape (0 is background, any other integer is one object) are
compared pixel by pixel: for every pair of a true and a predicted object that share at least
one pixel, their intersection and intersection over union (IoU), which is all the matching of
:mod:`embedseg_cli.data.matching` needs.

Everything is sparse: only the pairs of objects that actually overlap are ever stored, so an
image with 100,000 objects costs memory linear in its pixels and its overlapping pairs, never
``n_true * n_pred``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["FloatArray", "IntArray", "Overlap", "compute_overlap"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 22
"""Pixels handled at once; bounds the temporaries to a few hundred MB whatever the volume."""

_INT64_MAX = int(np.iinfo(np.int64).max)

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Overlap:
    """The sparse overlap of a true and a predicted label image.

    Attributes
    ----------
    true_labels, pred_labels : ndarray of int64
        The object labels present in each image, sorted, background excluded.
    true_sizes, pred_sizes : ndarray of int64
        The pixel count of each object, aligned with ``true_labels`` / ``pred_labels``.
    pair_true, pair_pred : ndarray of int64
        For every overlapping pair, the index of its objects in ``true_labels`` and
        ``pred_labels``; sorted by ``(pair_true, pair_pred)``, each pair once.
    pair_intersection : ndarray of int64
        The number of pixels the two objects of each pair share (always > 0).
    pair_iou : ndarray of float64
        The intersection over union of each pair.
    """

    true_labels: IntArray
    pred_labels: IntArray
    true_sizes: IntArray
    pred_sizes: IntArray
    pair_true: IntArray
    pair_pred: IntArray
    pair_intersection: IntArray
    pair_iou: FloatArray

    @property
    def n_true(self) -> int:
        """Number of true objects."""
        return int(self.true_labels.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted objects."""
        return int(self.pred_labels.size)


@dataclass(frozen=True, eq=False)
class _LabelIndex:
    """Labels of one image and a map from label values to 1-based indices (0: background)."""

    labels: NDArray[Any]
    sizes: IntArray
    lookup: IntArray | None
    sorted_values: NDArray[Any] | None

    def index(self, values: NDArray[Any]) -> IntArray:
        if self.lookup is not None:
            mapped: IntArray = self.lookup[values]
            return mapped
        assert self.sorted_values is not None
        return np.searchsorted(self.sorted_values, values).astype(np.int64, copy=False)


def _validate(y_true: NDArray[Any], y_pred: NDArray[Any]) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"label images must have the same shape (y_true {y_true.shape}, y_pred {y_pred.shape})"
        )
    for array in (y_true, y_pred):
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"labels must be integers (got {array.dtype})")


def _flat_views(y_true: NDArray[Any], y_pred: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    # Both images must be flattened in the same order; picking the order they share avoids a
    # copy of each (hundreds of MB for a large volume).
    both_fortran = (
        y_true.flags.f_contiguous
        and y_pred.flags.f_contiguous
        and not (y_true.flags.c_contiguous and y_pred.flags.c_contiguous)
    )
    order: Any = "F" if both_fortran else "C"
    return np.ravel(y_true, order=order), np.ravel(y_pred, order=order)


def _chunks(size: int, chunk: int) -> range:
    return range(0, size, max(chunk, 1))


def _run_lengths(values: NDArray[Any]) -> tuple[NDArray[Any], IntArray]:
    """Collapse runs of equal neighbours: labels are spatially coherent, so this shrinks a lot."""
    if values.size == 0:
        return values, np.zeros(0, dtype=np.int64)
    change = np.empty(values.size, dtype=bool)
    change[0] = True
    np.not_equal(values[1:], values[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=values.size).astype(np.int64, copy=False)
    return values[starts], lengths


def _sum_by_key(keys: NDArray[Any], weights: IntArray) -> tuple[NDArray[Any], IntArray]:
    """Sorted distinct keys and the sum of the weights of each."""
    if keys.size == 0:
        return keys, weights
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    first = np.empty(sorted_keys.size, dtype=bool)
    first[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return sorted_keys[starts], np.add.reduceat(weights[order], starts)


def _index_labels(flat: NDArray[Any], name: str) -> _LabelIndex:
    """Find the labels of one flattened image, their sizes, and a way to renumber them."""
    if flat.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _LabelIndex(empty, empty, np.zeros(1, dtype=np.int64), None)
    low, high = int(flat.min()), int(flat.max())
    if low < 0:
        raise ValueError(f"labels must be non-negative ({name} contains {low})")
    if high > _INT64_MAX:
        raise ValueError(f"labels must fit in int64 ({name} contains {high})")

    if high < flat.size + (1 << 20):
        # Label values are small: a histogram beats sorting by an order of magnitude. A chunk
        # at least as long as the histogram keeps the per-chunk cost proportional to its pixels.
        counts = np.zeros(high + 1, dtype=np.int64)
        chunk = max(_CHUNK, high + 1)
        for start in _chunks(flat.size, chunk):
            part = flat[start : start + chunk].astype(np.intp, copy=False)
            counts += np.bincount(part, minlength=high + 1)
        labels = np.flatnonzero(counts[1:]).astype(np.int64) + 1
        lookup = np.zeros(high + 1, dtype=np.int64)
        lookup[labels] = np.arange(1, labels.size + 1, dtype=np.int64)
        return _LabelIndex(labels, counts[labels], lookup, None)

    # Huge label values (e.g. hashes or 2**31 + k): renumber by sorted search instead.
    logger.debug("%s has labels up to %d; renumbering them by sorting", name, high)
    found_values: list[NDArray[Any]] = []
    found_counts: list[IntArray] = []
    for start in _chunks(flat.size, _CHUNK):
        values, lengths = _run_lengths(flat[start : start + _CHUNK])
        values, lengths = _sum_by_key(values, lengths)
        found_values.append(values)
        found_counts.append(lengths)
    values, counts = _sum_by_key(np.concatenate(found_values), np.concatenate(found_counts))
    objects = values != 0
    sorted_values = np.concatenate([np.zeros(1, dtype=flat.dtype), values[objects]])
    return _LabelIndex(values[objects], counts[objects], None, sorted_values)


def compute_overlap(y_true: NDArray[np.integer[Any]], y_pred: NDArray[np.integer[Any]]) -> Overlap:
    """Compute the sparse overlap of two label images.

    Parameters
    ----------
    y_true, y_pred : ndarray of int
        Ground-truth and predicted label images of the same shape (any number of dimensions,
        any integer dtype). 0 is background; other values need not be consecutive.

    Returns
    -------
    Overlap
        The labels and sizes of the objects of both images and, for every pair of objects that
        share at least one pixel, their intersection and IoU.

    Raises
    ------
    ValueError
        If the shapes differ or a label is negative.
    TypeError
        If a label image is not of an integer dtype.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    _validate(y_true, y_pred)
    flat_true, flat_pred = _flat_views(y_true, y_pred)
    true_index = _index_labels(flat_true, "y_true")
    pred_index = _index_labels(flat_pred, "y_pred")
    n_pred = max(int(pred_index.labels.size), 1)

    pair_keys: list[IntArray] = []
    pair_counts: list[IntArray] = []
    for start in _chunks(flat_true.size, _CHUNK):
        part_true = flat_true[start : start + _CHUNK]
        part_pred = flat_pred[start : start + _CHUNK]
        both = (part_true != 0) & (part_pred != 0)
        if not both.any():
            continue
        keys = true_index.index(part_true[both]) - 1
        keys *= n_pred
        keys += pred_index.index(part_pred[both]) - 1
        keys, lengths = _sum_by_key(*_run_lengths(keys))
        pair_keys.append(keys)
        pair_counts.append(lengths)

    if pair_keys:
        keys, intersection = _sum_by_key(np.concatenate(pair_keys), np.concatenate(pair_counts))
    else:
        keys = intersection = np.zeros(0, dtype=np.int64)
    pair_true, pair_pred = np.divmod(keys, n_pred)
    union = true_index.sizes[pair_true] + pred_index.sizes[pair_pred] - intersection
    overlap = Overlap(
        true_labels=true_index.labels.astype(np.int64, copy=False),
        pred_labels=pred_index.labels.astype(np.int64, copy=False),
        true_sizes=true_index.sizes,
        pred_sizes=pred_index.sizes,
        pair_true=pair_true.astype(np.int64, copy=False),
        pair_pred=pair_pred.astype(np.int64, copy=False),
        pair_intersection=intersection.astype(np.int64, copy=False),
        pair_iou=intersection / union,
    )
    for field in (
        overlap.true_labels,
        overlap.pred_labels,
        overlap.true_sizes,
        overlap.pred_sizes,
        overlap.pair_true,
        overlap.pair_pred,
        overlap.pair_intersection,
        overlap.pair_iou,
    ):
        field.setflags(write=False)
    return overlap
