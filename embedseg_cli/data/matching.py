"""Instance-segmentation matching metrics, as StarDist's ``matching`` and the EmbedSeg paper.

Two label images (0 is background, any other integer is one object) are compared object by
object. A true and a predicted object *match* at threshold ``t`` when their intersection over
union (IoU) is at least ``t`` and the pair belongs to a one-to-one matching that has as many
such pairs as possible; among those matchings the one with the largest sum of IoU is taken.
Matched pairs are true positives, unmatched predictions false positives and unmatched true
objects false negatives.

Everything is sparse: only the pairs of objects that actually overlap are ever stored, so an
image with 100,000 objects costs memory linear in its pixels and its overlapping pairs, never
``n_true * n_pred``. The one-to-one matching is solved per connected component of the graph of
candidate pairs, which is tiny for real segmentations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching

__all__ = [
    "DatasetScores",
    "MatchingStats",
    "MeanScores",
    "Overlap",
    "aggregate",
    "compute_overlap",
    "default_thresholds",
    "evaluate_image",
    "match_instances",
    "matched_pairs",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 22
"""Pixels handled at once; bounds the temporaries to a few hundred MB whatever the volume."""

_DENSE_LIMIT = 2000 * 2000
"""Largest component (rows x columns) solved with a dense assignment; larger ones go sparse."""

_INT64_MAX = int(np.iinfo(np.int64).max)

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# Overlap
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"IoU thresholds must lie in (0, 1] (got {threshold!r})")
    return value


def _solve_dense(
    rows: IntArray, cols: IntArray, iou: FloatArray, shape: tuple[int, int]
) -> IntArray:
    # StarDist's cost: every candidate pair is worth 1, plus a tie-break that can never add up to
    # one whole pair, so the assignment maximises the count first and the IoU sum second.
    scale = 2.0 * min(shape)
    cost = np.zeros(shape, dtype=np.float64)
    cost[rows, cols] = -1.0 - iou / scale
    edge = np.full(shape, -1, dtype=np.int64)
    edge[rows, cols] = np.arange(rows.size, dtype=np.int64)
    assigned_rows, assigned_cols = linear_sum_assignment(cost)
    chosen: IntArray = edge[assigned_rows, assigned_cols]
    return chosen[chosen >= 0]


def _solve_sparse(
    rows: IntArray, cols: IntArray, iou: FloatArray, shape: tuple[int, int]
) -> IntArray:
    """Find the same optimum as `_solve_dense`, for components too big for a dense matrix.

    A full matching is required by the sparse solver, so every row gets a dummy column and every
    column a dummy row ("left unmatched"), and for each candidate pair the two dummies it frees
    are joined. Every full matching then has ``n_rows + n_cols`` edges, so adding 2 to all costs
    keeps them non-zero (the solver's requirement) without changing the optimum.
    """
    n_rows, n_cols = shape
    n_edges = rows.size
    scale = 2.0 * min(shape)
    arange_rows = np.arange(n_rows, dtype=np.int64)
    arange_cols = np.arange(n_cols, dtype=np.int64)
    matrix_rows = np.concatenate([rows, arange_rows, n_rows + arange_cols, n_rows + cols])
    matrix_cols = np.concatenate([cols, n_cols + arange_rows, arange_cols, n_cols + rows])
    weights = np.full(matrix_rows.size, 2.0)
    weights[:n_edges] = 1.0 - iou / scale
    size = n_rows + n_cols
    graph = scipy.sparse.csr_array((weights, (matrix_rows, matrix_cols)), shape=(size, size))
    assigned_rows, assigned_cols = min_weight_full_bipartite_matching(graph)
    assigned_rows = np.asarray(assigned_rows, dtype=np.int64)
    assigned_cols = np.asarray(assigned_cols, dtype=np.int64)
    real = (assigned_rows < n_rows) & (assigned_cols < n_cols)
    keys = assigned_rows[real] * n_cols + assigned_cols[real]
    edge_keys = rows * n_cols + cols
    order = np.argsort(edge_keys)
    picked: IntArray = order[np.searchsorted(edge_keys, keys, sorter=order)].astype(np.int64)
    return picked


def _solve_component(rows: IntArray, cols: IntArray, iou: FloatArray) -> IntArray:
    """Optimal matching of one component; returns indices into its edge arrays."""
    row_ids, local_rows = np.unique(rows, return_inverse=True)
    col_ids, local_cols = np.unique(cols, return_inverse=True)
    shape = (int(row_ids.size), int(col_ids.size))
    local_rows = local_rows.astype(np.int64, copy=False)
    local_cols = local_cols.astype(np.int64, copy=False)
    if shape[0] * shape[1] <= _DENSE_LIMIT:
        return _solve_dense(local_rows, local_cols, iou, shape)
    logger.debug("matching a %d x %d component with the sparse solver", *shape)
    return _solve_sparse(local_rows, local_cols, iou, shape)


def _first_of_each(groups: IntArray) -> NDArray[np.bool_]:
    first = np.empty(groups.size, dtype=bool)
    if groups.size:
        first[0] = True
        np.not_equal(groups[1:], groups[:-1], out=first[1:])
    return first


def _matched_indices(overlap: Overlap, threshold: float) -> IntArray:
    """Return the indices into the pair arrays of the pairs matched at ``threshold``."""
    threshold = _check_threshold(threshold)
    candidates = np.flatnonzero(overlap.pair_iou >= threshold).astype(np.int64)
    if threshold > 0.5 or candidates.size <= 1:
        # IoU > 0.5 with two different partners would need more than all of an object's pixels,
        # so every candidate pair is already one-to-one. (At exactly 0.5 it is possible.)
        return candidates

    cand_true = overlap.pair_true[candidates]
    cand_pred = overlap.pair_pred[candidates]
    degree_true = np.bincount(cand_true, minlength=overlap.n_true)
    degree_pred = np.bincount(cand_pred, minlength=overlap.n_pred)
    isolated = (degree_true[cand_true] == 1) & (degree_pred[cand_pred] == 1)
    if isolated.all():
        return candidates

    chosen = [candidates[isolated]]
    rest = candidates[~isolated]
    rest_iou = overlap.pair_iou[rest]
    row_ids, rows = np.unique(overlap.pair_true[rest], return_inverse=True)
    col_ids, cols = np.unique(overlap.pair_pred[rest], return_inverse=True)
    n_rows, n_cols = int(row_ids.size), int(col_ids.size)
    graph = scipy.sparse.coo_array(
        (np.ones(rest.size, dtype=np.int8), (rows, n_rows + cols)),
        shape=(n_rows + n_cols, n_rows + n_cols),
    )
    n_components, node_component = connected_components(graph, directed=False)
    edge_component = node_component[rows].astype(np.int64)
    rows_per = np.bincount(node_component[:n_rows], minlength=n_components)
    cols_per = np.bincount(node_component[n_rows:], minlength=n_components)

    # A star (one object on one side) can match only one pair: take its best IoU.
    is_star = np.minimum(rows_per, cols_per) == 1
    star_edges = np.flatnonzero(is_star[edge_component])
    order = np.lexsort((-rest_iou[star_edges], edge_component[star_edges]))
    star_edges = star_edges[order]
    chosen.append(rest[star_edges[_first_of_each(edge_component[star_edges])]])

    general_edges = np.flatnonzero(~is_star[edge_component])
    general_edges = general_edges[np.argsort(edge_component[general_edges], kind="stable")]
    bounds = np.flatnonzero(_first_of_each(edge_component[general_edges]))
    for edges in np.split(general_edges, bounds[1:]):
        picked = _solve_component(
            rows[edges].astype(np.int64), cols[edges].astype(np.int64), rest_iou[edges]
        )
        chosen.append(rest[edges[picked]])
    return np.sort(np.concatenate(chosen))


def matched_pairs(overlap: Overlap, threshold: float) -> tuple[IntArray, IntArray, FloatArray]:
    """Return the pairs of objects matched at an IoU threshold.

    Parameters
    ----------
    overlap : Overlap
        The overlap of the two label images, from :func:`compute_overlap`.
    threshold : float
        The IoU a pair needs to match, in (0, 1]; a pair exactly at the threshold matches.

    Returns
    -------
    true_labels, pred_labels : ndarray of int64
        The labels of the matched objects, one pair per position, sorted by true label.
    iou : ndarray of float64
        The IoU of each matched pair.
    """
    index = _matched_indices(overlap, threshold)
    return (
        overlap.true_labels[overlap.pair_true[index]],
        overlap.pred_labels[overlap.pair_pred[index]],
        overlap.pair_iou[index],
    )


def _ratio(numerator: float, denominator: float, *, empty: float) -> float:
    return numerator / denominator if denominator > 0 else empty


@dataclass(frozen=True)
class MatchingStats:
    """Matching counts at one IoU threshold, for one image or pooled over several.

    Attributes
    ----------
    threshold : float
        The IoU threshold.
    tp, fp, fn : int
        Matched pairs, unmatched predicted objects and unmatched true objects.
    n_true, n_pred : int
        Number of true and predicted objects.
    sum_matched_iou : float
        Sum of the IoU of the matched pairs.

    Notes
    -----
    When there are neither true nor predicted objects (``tp + fp + fn == 0``) precision, recall,
    F1, AP and PQ are 1: an image with neither true nor predicted objects counts as AP 1.
    Otherwise a ratio with a zero denominator is 0.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    sum_matched_iou: float

    def __post_init__(self) -> None:
        if min(self.tp, self.fp, self.fn) < 0:
            raise ValueError(f"counts must be non-negative: {self}")
        if self.tp + self.fp != self.n_pred or self.tp + self.fn != self.n_true:
            raise ValueError(f"inconsistent counts: {self}")

    @property
    def _empty(self) -> float:
        # Only used when a denominator is zero; then "nothing to find, nothing found" is perfect.
        return 1.0 if self.tp + self.fp + self.fn == 0 else 0.0

    @property
    def precision(self) -> float:
        """``tp / (tp + fp)``."""
        return _ratio(self.tp, self.tp + self.fp, empty=self._empty)

    @property
    def recall(self) -> float:
        """``tp / (tp + fn)``."""
        return _ratio(self.tp, self.tp + self.fn, empty=self._empty)

    @property
    def f1(self) -> float:
        """``2 tp / (2 tp + fp + fn)``."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, empty=self._empty)

    @property
    def ap_dsb(self) -> float:
        """``tp / (tp + fp + fn)``, the Data Science Bowl 2018 "average precision"."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, empty=self._empty)

    @property
    def mean_matched_iou(self) -> float:
        """Mean IoU of the matched pairs; 0 when nothing matched."""
        return _ratio(self.sum_matched_iou, self.tp, empty=0.0)

    @property
    def panoptic_quality(self) -> float:
        """``sum matched IoU / (tp + fp / 2 + fn / 2)``."""
        return _ratio(
            self.sum_matched_iou, self.tp + 0.5 * self.fp + 0.5 * self.fn, empty=self._empty
        )

    def to_dict(self) -> dict[str, float | int]:
        """All counts and derived metrics, keyed by name."""
        return {
            "threshold": self.threshold,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "n_true": self.n_true,
            "n_pred": self.n_pred,
            "sum_matched_iou": self.sum_matched_iou,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "ap_dsb": self.ap_dsb,
            "mean_matched_iou": self.mean_matched_iou,
            "panoptic_quality": self.panoptic_quality,
        }


def match_instances(overlap: Overlap, threshold: float) -> MatchingStats:
    """Match the objects of two label images at one IoU threshold.

    The matching is one-to-one, has as many pairs with ``IoU >= threshold`` as possible and,
    among those, the largest sum of IoU (StarDist's cost ``-(iou >= t) - iou / (2 n)``, with
    the IoU of pairs below the threshold left out of the tie-break since they are never
    reported).

    Parameters
    ----------
    overlap : Overlap
        The overlap of the two label images, from :func:`compute_overlap`.
    threshold : float
        The IoU a pair needs to match, in (0, 1].

    Returns
    -------
    MatchingStats
        The counts at this threshold.

    Raises
    ------
    ValueError
        If the threshold is not in (0, 1].
    """
    index = _matched_indices(overlap, threshold)
    tp = int(index.size)
    return MatchingStats(
        threshold=float(threshold),
        tp=tp,
        fp=overlap.n_pred - tp,
        fn=overlap.n_true - tp,
        n_true=overlap.n_true,
        n_pred=overlap.n_pred,
        sum_matched_iou=float(overlap.pair_iou[index].sum()),
    )


def evaluate_image(
    y_true: NDArray[np.integer[Any]],
    y_pred: NDArray[np.integer[Any]],
    thresholds: Sequence[float],
) -> list[MatchingStats]:
    """Match a predicted label image to its ground truth at several IoU thresholds.

    Parameters
    ----------
    y_true, y_pred : ndarray of int
        Ground-truth and predicted label images of the same shape; 0 is background.
    thresholds : sequence of float
        IoU thresholds in (0, 1], e.g. ``default_thresholds(y_true.ndim)``.

    Returns
    -------
    list of MatchingStats
        One entry per threshold, in the given order.

    Raises
    ------
    ValueError
        If the shapes differ, a label is negative or a threshold is not in (0, 1].
    TypeError
        If a label image is not of an integer dtype.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((4, 4), dtype=np.uint16)
    >>> labels[:2, :2] = 1
    >>> labels[2:, 2:] = 7
    >>> [stats] = evaluate_image(labels, labels, [0.5])
    >>> stats.tp, stats.fp, stats.fn, stats.ap_dsb
    (2, 0, 0, 1.0)
    """
    checked = [_check_threshold(t) for t in thresholds]
    overlap = compute_overlap(y_true, y_pred)
    return [match_instances(overlap, t) for t in checked]


def default_thresholds(ndim: int) -> tuple[float, ...]:
    """Return the IoU thresholds EmbedSeg reports for 2D images or 3D volumes.

    Parameters
    ----------
    ndim : int
        2 for images, 3 for volumes.

    Returns
    -------
    tuple of float
        ``0.5, 0.55, ..., 0.9`` in 2D and ``0.1, 0.2, ..., 0.9`` in 3D.

    Raises
    ------
    ValueError
        For any other number of dimensions.
    """
    if ndim == 2:
        values = np.arange(50, 91, 5) / 100
    elif ndim == 3:
        values = np.arange(1, 10) / 10
    else:
        raise ValueError(f"default thresholds exist for 2D and 3D only (got ndim={ndim})")
    return tuple(float(v) for v in np.round(values, 2))


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanScores:
    """Metrics at one threshold averaged over images, each image weighing the same.

    These are the numbers the EmbedSeg paper reports.
    """

    threshold: float
    n_images: int
    precision: float
    recall: float
    f1: float
    ap_dsb: float
    mean_matched_iou: float
    panoptic_quality: float

    def to_dict(self) -> dict[str, float | int]:
        """All fields, keyed by name."""
        return {
            "threshold": self.threshold,
            "n_images": self.n_images,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "ap_dsb": self.ap_dsb,
            "mean_matched_iou": self.mean_matched_iou,
            "panoptic_quality": self.panoptic_quality,
        }


@dataclass(frozen=True)
class DatasetScores:
    """Scores of a data set at each threshold, aggregated two ways.

    Attributes
    ----------
    thresholds : tuple of float
        The IoU thresholds.
    n_images : int
        Number of images.
    per_image : tuple of MeanScores
        Per threshold, the mean over images of each image's metrics.
    pooled : tuple of MatchingStats
        Per threshold, the counts and matched IoU summed over images; its ratios are those of
        the whole data set seen as one image.
    """

    thresholds: tuple[float, ...]
    n_images: int
    per_image: tuple[MeanScores, ...]
    pooled: tuple[MatchingStats, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready view: ``thresholds``, ``n_images``, ``per_image``, ``pooled``."""
        return {
            "thresholds": list(self.thresholds),
            "n_images": self.n_images,
            "per_image": [scores.to_dict() for scores in self.per_image],
            "pooled": [stats.to_dict() for stats in self.pooled],
        }


_MEAN_METRICS: tuple[tuple[str, Callable[[MatchingStats], float]], ...] = (
    ("precision", lambda s: s.precision),
    ("recall", lambda s: s.recall),
    ("f1", lambda s: s.f1),
    ("ap_dsb", lambda s: s.ap_dsb),
    ("mean_matched_iou", lambda s: s.mean_matched_iou),
    ("panoptic_quality", lambda s: s.panoptic_quality),
)


def aggregate(per_image_stats: Sequence[Sequence[MatchingStats]]) -> DatasetScores:
    """Aggregate per-image matching results over a data set.

    Parameters
    ----------
    per_image_stats : sequence of sequence of MatchingStats
        For each image, its stats at each threshold (as from :func:`evaluate_image`); every
        image must use the same thresholds in the same order.

    Returns
    -------
    DatasetScores
        ``per_image`` (mean of each image's metrics) and ``pooled`` (metrics of the summed
        counts) at each threshold.

    Raises
    ------
    ValueError
        If there are no images or the images' thresholds differ.
    """
    if not per_image_stats:
        raise ValueError("cannot aggregate an empty data set")
    thresholds = tuple(s.threshold for s in per_image_stats[0])
    for number, image in enumerate(per_image_stats):
        if tuple(s.threshold for s in image) != thresholds:
            raise ValueError(
                f"image {number} has thresholds {[s.threshold for s in image]}, "
                f"image 0 has {list(thresholds)}"
            )
    n_images = len(per_image_stats)
    per_image: list[MeanScores] = []
    pooled: list[MatchingStats] = []
    for position, threshold in enumerate(thresholds):
        column = [image[position] for image in per_image_stats]
        means = {name: math.fsum(get(s) for s in column) / n_images for name, get in _MEAN_METRICS}
        per_image.append(MeanScores(threshold=threshold, n_images=n_images, **means))
        pooled.append(
            MatchingStats(
                threshold=threshold,
                tp=sum(s.tp for s in column),
                fp=sum(s.fp for s in column),
                fn=sum(s.fn for s in column),
                n_true=sum(s.n_true for s in column),
                n_pred=sum(s.n_pred for s in column),
                sum_matched_iou=math.fsum(s.sum_matched_iou for s in column),
            )
        )
    return DatasetScores(
        thresholds=thresholds, n_images=n_images, per_image=tuple(per_image), pooled=tuple(pooled)
    )
