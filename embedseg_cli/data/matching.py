"""The one-to-one matching of instances at an IoU threshold, as StarDist's ``matching``.

Two label images (0 is background, any other integer is one object) are compared object by
object. A true and a predicted object *match* at threshold ``t`` when their intersection over
union (IoU) is at least ``t`` and the pair belongs to a one-to-one matching that has as many
such pairs as possible; among those matchings the one with the largest sum of IoU is taken.
Matched pairs are true positives, unmatched predictions false positives and unmatched true
objects false negatives.

The matching reads the sparse overlap of :mod:`embedseg_cli.data.overlap`, never an
``n_true * n_pred`` matrix. The one-to-one matching is solved per connected component of the
graph of candidate pairs, which is tiny for real segmentations.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching

from embedseg_cli.data.overlap import FloatArray, IntArray, Overlap

__all__ = ["MatchingStats", "check_threshold", "match_instances", "matched_pairs"]

logger = logging.getLogger(__name__)

_DENSE_LIMIT = 2000 * 2000
"""Largest component (rows x columns) solved with a dense assignment; larger ones go sparse."""


def check_threshold(threshold: float) -> float:
    """Check an IoU threshold.

    Parameters
    ----------
    threshold : float
        The IoU a pair needs to match.

    Returns
    -------
    float
        ``threshold`` as a Python float.

    Raises
    ------
    ValueError
        If the threshold is not in (0, 1] (NaN and infinities included).
    """
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
    threshold = check_threshold(threshold)
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
        The overlap of the two label images, from
        :func:`~embedseg_cli.data.overlap.compute_overlap`.
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
        The overlap of the two label images, from
        :func:`~embedseg_cli.data.overlap.compute_overlap`.
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
