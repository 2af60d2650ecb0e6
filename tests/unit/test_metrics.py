"""Tests of the instance-matching metrics against hand-made cases and a brute-force reference."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest
import scipy.sparse
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from embedseg_cli.data import matching, metrics
from embedseg_cli.data.matching import MatchingStats, match_instances, matched_pairs
from embedseg_cli.data.metrics import DatasetScores, aggregate, default_thresholds, evaluate_image
from embedseg_cli.data.overlap import Overlap, compute_overlap

Labels = NDArray[Any]


def _single(y_true: Labels, y_pred: Labels, threshold: float) -> MatchingStats:
    [stats] = evaluate_image(y_true, y_pred, [threshold])
    return stats


def _counts(stats: MatchingStats) -> tuple[int, int, int]:
    return stats.tp, stats.fp, stats.fn


# --------------------------------------------------------------------------------------------
# Hand-made cases
# --------------------------------------------------------------------------------------------


def test_perfect_match() -> None:
    labels = np.zeros((6, 6), dtype=np.uint16)
    labels[:2, :3] = 1
    labels[3:, 2:] = 2
    for stats in evaluate_image(labels, labels, default_thresholds(2)):
        assert _counts(stats) == (2, 0, 0)
        assert stats.precision == stats.recall == stats.f1 == stats.ap_dsb == 1.0
        assert stats.mean_matched_iou == stats.panoptic_quality == 1.0


def test_overlap_fields() -> None:
    y_true = np.array([[1, 1, 0], [2, 2, 2]], dtype=np.int32)
    y_pred = np.array([[5, 0, 0], [5, 9, 9]], dtype=np.int32)
    overlap = compute_overlap(y_true, y_pred)
    assert overlap.true_labels.tolist() == [1, 2]
    assert overlap.pred_labels.tolist() == [5, 9]
    assert overlap.true_sizes.tolist() == [2, 3]
    assert overlap.pred_sizes.tolist() == [2, 2]
    pairs = list(
        zip(
            overlap.pair_true.tolist(),
            overlap.pair_pred.tolist(),
            overlap.pair_intersection.tolist(),
            strict=True,
        )
    )
    assert pairs == [(0, 0, 1), (1, 0, 1), (1, 1, 2)]
    np.testing.assert_allclose(overlap.pair_iou, [1 / 3, 1 / 4, 2 / 3])
    assert overlap.n_true == overlap.n_pred == 2
    assert not overlap.pair_iou.flags.writeable


def test_split_object() -> None:
    y_true = np.zeros((4, 4), dtype=np.uint8)
    y_true[:, :] = 3
    y_pred = np.zeros_like(y_true)
    y_pred[:, :2] = 1
    y_pred[:, 2:] = 2
    # Each half has IoU exactly 0.5: only one of them can take the true object.
    at_half = _single(y_true, y_pred, 0.5)
    assert _counts(at_half) == (1, 1, 0)
    assert at_half.mean_matched_iou == 0.5
    assert at_half.panoptic_quality == pytest.approx(0.5 / 1.5)
    assert _counts(_single(y_true, y_pred, 0.6)) == (0, 2, 1)
    assert _counts(_single(y_true, y_pred, 0.3)) == (1, 1, 0)


def test_merged_objects() -> None:
    y_true = np.zeros((4, 4), dtype=np.uint8)
    y_true[:2] = 1
    y_true[2:] = 2
    y_pred = np.full((4, 4), 4, dtype=np.uint8)
    assert _counts(_single(y_true, y_pred, 0.5)) == (1, 0, 1)
    assert _counts(_single(y_true, y_pred, 0.51)) == (0, 1, 2)


def test_two_predictions_each_at_half_iou_of_one_true_object() -> None:
    y_true = np.zeros((1, 8), dtype=np.int16)
    y_true[0, 2:6] = 1  # four pixels
    y_pred = np.zeros_like(y_true)
    y_pred[0, 0:2] = 1  # touches nothing
    y_pred[0, 2:4] = 3  # half of the true object: IoU 2 / 4
    y_pred[0, 4:6] = 2  # the other half: IoU 2 / 4
    overlap = compute_overlap(y_true, y_pred)
    assert sorted(overlap.pair_iou.tolist()) == [0.5, 0.5]
    stats = match_instances(overlap, 0.5)
    assert _counts(stats) == (1, 2, 0)
    assert stats.sum_matched_iou == 0.5


def test_iou_exactly_on_threshold() -> None:
    y_true = np.zeros((3, 6), dtype=np.uint16)
    y_pred = np.zeros_like(y_true)
    y_true[1, 0:3] = 1
    y_pred[1, 1:4] = 1  # intersection 2, union 4
    overlap = compute_overlap(y_true, y_pred)
    assert overlap.pair_iou.tolist() == [0.5]
    assert _counts(match_instances(overlap, 0.5)) == (1, 0, 0)
    assert _counts(match_instances(overlap, float(np.nextafter(0.5, 1.0)))) == (0, 1, 1)

    # A 1x4 bar shifted by one pixel: IoU 3 / 5 = 0.6, on the 2D threshold 0.6.
    y_true = np.zeros((1, 6), dtype=np.uint16)
    y_pred = np.zeros_like(y_true)
    y_true[0, 0:4] = 1
    y_pred[0, 1:5] = 1
    stats = evaluate_image(y_true, y_pred, default_thresholds(2))
    assert {s.threshold: s.tp for s in stats} == {
        0.5: 1,
        0.55: 1,
        0.6: 1,
        0.65: 0,
        0.7: 0,
        0.75: 0,
        0.8: 0,
        0.85: 0,
        0.9: 0,
    }


def test_empty_prediction() -> None:
    y_true = np.zeros((5, 5), dtype=np.uint16)
    y_true[1:3, 1:3] = 4
    y_true[4, 4] = 9
    stats = _single(y_true, np.zeros_like(y_true), 0.5)
    assert _counts(stats) == (0, 0, 2)
    assert stats.precision == stats.recall == stats.f1 == stats.ap_dsb == 0.0
    assert stats.mean_matched_iou == stats.panoptic_quality == 0.0


def test_empty_ground_truth() -> None:
    y_pred = np.zeros((5, 5), dtype=np.uint16)
    y_pred[1:3, 1:3] = 4
    stats = _single(np.zeros_like(y_pred), y_pred, 0.5)
    assert _counts(stats) == (0, 1, 0)
    assert stats.precision == stats.recall == stats.f1 == stats.ap_dsb == 0.0
    assert stats.panoptic_quality == 0.0


def test_both_empty_counts_as_perfect() -> None:
    empty = np.zeros((4, 5, 6), dtype=np.uint32)
    stats = _single(empty, empty, 0.5)
    assert _counts(stats) == (0, 0, 0)
    assert stats.n_true == stats.n_pred == 0
    assert stats.precision == stats.recall == stats.f1 == stats.ap_dsb == 1.0
    assert stats.panoptic_quality == 1.0
    assert stats.mean_matched_iou == 0.0
    # Zero-size images are empty too.
    zero = np.zeros((0, 3), dtype=np.int64)
    assert _counts(_single(zero, zero, 0.5)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        (np.uint32, (7, 1000, 2**31 + 5)),
        (np.int64, (7, 1000, 2**31 + 5)),
        (np.int64, (3, 2**40, 2**62 + 1)),
        (np.uint64, (1, 2**33, 2**63 - 1)),
        (np.int8, (1, 64, 127)),
        (np.uint16, (7, 1000, 65535)),
    ],
)
def test_large_and_non_consecutive_labels(
    dtype: type[np.integer[Any]], values: tuple[int, ...]
) -> None:
    a, b, c = values
    y_true = np.zeros((6, 6), dtype=dtype)
    y_true[:3, :3] = a
    y_true[3:, :3] = b
    y_true[:, 4:] = c
    y_pred = np.zeros((6, 6), dtype=dtype)
    y_pred[:3, :3] = c  # perfect match with a different label
    y_pred[3:, :2] = a  # IoU 6 / 9
    y_pred[:2, 4:] = b  # IoU 4 / 12
    overlap = compute_overlap(y_true, y_pred)
    assert overlap.true_labels.dtype == np.int64
    assert overlap.true_labels.tolist() == sorted(values)
    assert overlap.true_sizes.tolist() == [9, 9, 12]
    stats = match_instances(overlap, 0.5)
    assert _counts(stats) == (2, 1, 1)
    assert stats.mean_matched_iou == pytest.approx((1 + 6 / 9) / 2)
    true_ids, pred_ids, ious = matched_pairs(overlap, 0.5)
    assert dict(zip(true_ids.tolist(), pred_ids.tolist(), strict=True)) == {a: c, b: a}
    assert sorted(ious.tolist()) == pytest.approx([6 / 9, 1.0])
    assert _counts(match_instances(overlap, 0.3)) == (3, 0, 0)


def test_mixed_dtypes() -> None:
    y_true = np.array([[0, 1, 1], [0, 2, 2]], dtype=np.uint8)
    y_pred = np.array([[0, 70000, 70000], [0, 0, 2]], dtype=np.int64)
    assert _counts(_single(y_true, y_pred, 0.5)) == (2, 0, 0)


def test_3d() -> None:
    y_true = np.zeros((4, 6, 6), dtype=np.uint16)
    y_true[:2, :3, :3] = 1  # 18 voxels
    y_true[2:, 3:, 3:] = 2  # 18 voxels
    y_pred = np.zeros_like(y_true)
    y_pred[:2, :3, 1:4] = 5  # intersection 12 with 1, union 24: IoU 0.5
    y_pred[3:, 3:, 3:] = 6  # inside 2: IoU 9 / 18
    y_pred[0, 5, 5] = 8  # a false positive
    stats = evaluate_image(y_true, y_pred, default_thresholds(3))
    by_threshold = {s.threshold: _counts(s) for s in stats}
    assert by_threshold[0.5] == (2, 1, 0)
    assert by_threshold[0.6] == (0, 3, 2)
    assert stats[4].mean_matched_iou == 0.5


def test_memory_layouts_agree() -> None:
    rng = np.random.default_rng(3)
    y_true = _random_labels(rng, (9, 11, 7))
    y_pred = _random_labels(rng, (9, 11, 7))
    reference = [_counts(s) for s in evaluate_image(y_true, y_pred, [0.1, 0.3, 0.5])]
    strided = np.zeros((9, 22, 7), dtype=y_true.dtype)
    strided[:, ::2] = y_true
    for a, b in [
        (np.asfortranarray(y_true), np.asfortranarray(y_pred)),
        (np.asfortranarray(y_true), y_pred),
        (strided[:, ::2], np.asfortranarray(y_pred)),
    ]:
        assert [_counts(s) for s in evaluate_image(a, b, [0.1, 0.3, 0.5])] == reference


def test_chunked_processing_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    cases = [(_random_labels(rng, (12, 10, 9)), _random_labels(rng, (12, 10, 9))) for _ in range(5)]
    big = np.where(cases[0][0] > 0, cases[0][0].astype(np.int64) + 2**40, 0)
    cases.append((big, cases[0][1]))
    expected = [compute_overlap(a, b) for a, b in cases]
    monkeypatch.setattr("embedseg_cli.data.overlap._CHUNK", 7)
    for (a, b), reference in zip(cases, expected, strict=True):
        overlap = compute_overlap(a, b)
        for name in ("true_labels", "true_sizes", "pred_sizes", "pair_true", "pair_pred"):
            np.testing.assert_array_equal(getattr(overlap, name), getattr(reference, name))
        np.testing.assert_array_equal(overlap.pair_intersection, reference.pair_intersection)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        compute_overlap(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_])
def test_non_integer_labels_raise(dtype: type[np.generic]) -> None:
    good = np.zeros((3, 3), dtype=np.int32)
    bad = np.zeros((3, 3), dtype=dtype)
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"labels must be integers \(got {name}\)"):
        compute_overlap(good, bad)
    with pytest.raises(TypeError, match="labels must be integers"):
        evaluate_image(bad, good, [0.5])


def test_negative_labels_raise() -> None:
    labels = np.zeros((3, 3), dtype=np.int16)
    labels[0, 0] = -2
    with pytest.raises(ValueError, match="non-negative"):
        compute_overlap(labels, np.zeros_like(labels))


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5, float("nan")])
def test_bad_threshold_raises(threshold: float) -> None:
    labels = np.ones((2, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_image(labels, labels, [0.5, threshold])


def test_default_thresholds() -> None:
    assert default_thresholds(2) == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
    assert default_thresholds(3) == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    with pytest.raises(ValueError, match="ndim=4"):
        default_thresholds(4)


def test_doctests() -> None:
    assert doctest.testmod(metrics, raise_on_error=True).attempted > 0


# --------------------------------------------------------------------------------------------
# Matching on hand-made overlap graphs
# --------------------------------------------------------------------------------------------


def _overlap(n_true: int, n_pred: int, pairs: list[tuple[int, int, float]]) -> Overlap:
    pairs = sorted(pairs)
    ints = np.int64
    return Overlap(
        true_labels=np.arange(1, n_true + 1, dtype=ints),
        pred_labels=np.arange(1, n_pred + 1, dtype=ints),
        true_sizes=np.full(n_true, 100, dtype=ints),
        pred_sizes=np.full(n_pred, 100, dtype=ints),
        pair_true=np.array([p[0] for p in pairs], dtype=ints),
        pair_pred=np.array([p[1] for p in pairs], dtype=ints),
        pair_intersection=np.ones(len(pairs), dtype=ints),
        pair_iou=np.array([p[2] for p in pairs], dtype=np.float64),
    )


@pytest.mark.parametrize("dense_limit", [matching._DENSE_LIMIT, 0])
def test_matching_maximises_count_then_iou(
    monkeypatch: pytest.MonkeyPatch, dense_limit: int
) -> None:
    monkeypatch.setattr(matching, "_DENSE_LIMIT", dense_limit)
    # Greedy by IoU would take (0, 0) and leave 1 alone; the optimum matches both.
    greedy_trap = _overlap(2, 2, [(0, 0, 0.4), (0, 1, 0.3), (1, 0, 0.3)])
    stats = match_instances(greedy_trap, 0.3)
    assert _counts(stats) == (2, 0, 0)
    assert stats.sum_matched_iou == pytest.approx(0.6)
    # Two perfect matchings; the one with the larger IoU sum (0.4 + 0.31) wins.
    tie = _overlap(2, 2, [(0, 0, 0.4), (0, 1, 0.35), (1, 0, 0.35), (1, 1, 0.31)])
    true_ids, pred_ids, _ = matched_pairs(tie, 0.3)
    assert list(zip(true_ids.tolist(), pred_ids.tolist(), strict=True)) == [(1, 1), (2, 2)]
    # Isolated pairs, stars and a general component in one graph.
    mixed = _overlap(
        6,
        6,
        [
            (0, 0, 0.2),
            (1, 1, 0.25),
            (1, 2, 0.45),
            (2, 3, 0.3),
            (3, 3, 0.4),
            (3, 4, 0.3),
            (4, 5, 0.05),
        ],
    )
    true_ids, pred_ids, ious = matched_pairs(mixed, 0.2)
    assert list(zip(true_ids.tolist(), pred_ids.tolist(), strict=True)) == [
        (1, 1),
        (2, 3),
        (3, 4),
        (4, 5),
    ]
    assert ious.tolist() == [0.2, 0.45, 0.3, 0.3]


def test_matching_above_half_is_direct() -> None:
    overlap = _overlap(3, 3, [(0, 0, 0.9), (1, 1, 0.51), (2, 2, 0.5)])
    assert _counts(match_instances(overlap, 0.51)) == (2, 1, 1)
    assert _counts(match_instances(overlap, 1.0)) == (0, 3, 3)


# --------------------------------------------------------------------------------------------
# Randomised comparison with a brute-force reference
# --------------------------------------------------------------------------------------------


def _random_labels(rng: np.random.Generator, shape: tuple[int, ...]) -> Labels:
    labels = np.zeros(shape, dtype=np.int64)
    for label in rng.choice(np.arange(1, 60), size=rng.integers(1, 13), replace=False):
        starts = [int(rng.integers(0, s)) for s in shape]
        extents = [int(rng.integers(1, max(2, s // 2) + 1)) for s in shape]
        box = tuple(slice(a, a + e) for a, e in zip(starts, extents, strict=True))
        labels[box] = label
    return labels


def _random_pair(rng: np.random.Generator) -> tuple[Labels, Labels]:
    shape: tuple[int, ...] = (
        (int(rng.integers(6, 20)), int(rng.integers(6, 20)))
        if rng.random() < 0.5
        else (int(rng.integers(3, 8)), int(rng.integers(4, 10)), int(rng.integers(4, 10)))
    )
    y_true = _random_labels(rng, shape)
    kind = rng.integers(3)
    if kind == 0:
        y_pred = _random_labels(rng, shape)
    else:
        # A shifted, relabelled copy with extra boxes painted over it: near-duplicates make
        # many pairs with similar IoU, hence ambiguous matchings.
        shift = tuple(int(rng.integers(-2, 3)) for _ in shape)
        y_pred = np.roll(y_true, shift, axis=tuple(range(len(shape))))
        y_pred = np.where(y_pred > 0, y_pred + 100, 0)
        extra = _random_labels(rng, shape)
        y_pred = np.where(extra > 0, extra + 200 * (kind - 1), y_pred)
    if rng.random() < 0.2:
        y_true = np.where(y_true > 0, y_true * 2**35 + 7, 0)
    dtype: type[np.integer[Any]] = (np.uint16, np.int32, np.int64)[int(rng.integers(3))]
    if y_true.max() > np.iinfo(dtype).max:
        dtype = np.int64
    return y_true.astype(dtype), y_pred.astype(np.uint32)


def _brute_force(
    y_true: Labels, y_pred: Labels, threshold: float, *, stardist_cost: bool
) -> tuple[int, int, int, float]:
    """Dense IoU over all labels, then one assignment with StarDist's cost."""
    true_ids = [int(v) for v in np.unique(y_true) if v != 0]
    pred_ids = [int(v) for v in np.unique(y_pred) if v != 0]
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for i, a in enumerate(true_ids):
        mask_a = y_true == a
        for j, b in enumerate(pred_ids):
            mask_b = y_pred == b
            inter = int(np.count_nonzero(mask_a & mask_b))
            iou[i, j] = inter / int(np.count_nonzero(mask_a | mask_b))
    tp, sum_iou = 0, 0.0
    if true_ids and pred_ids:
        ok = iou >= threshold
        n_matched = min(len(true_ids), len(pred_ids))
        tie_break = iou if stardist_cost else np.where(ok, iou, 0.0)
        cost = -ok.astype(float) - tie_break / (2 * n_matched)
        rows, cols = linear_sum_assignment(cost)
        matched = ok[rows, cols]
        tp = int(matched.sum())
        sum_iou = float(iou[rows, cols][matched].sum())
    return tp, len(pred_ids) - tp, len(true_ids) - tp, sum_iou


def _general_components(overlap: Overlap, threshold: float) -> int:
    """Count candidate components that need a real assignment (>= 2 objects on each side)."""
    keep = overlap.pair_iou >= threshold
    rows, cols = overlap.pair_true[keep], overlap.pair_pred[keep]
    n = overlap.n_true + overlap.n_pred
    graph = scipy.sparse.coo_array(
        (np.ones(rows.size), (rows, overlap.n_true + cols)), shape=(n, n)
    )
    n_components, component = connected_components(graph, directed=False)
    true_per = np.bincount(component[np.unique(rows)], minlength=n_components)
    pred_per = np.bincount(component[overlap.n_true + np.unique(cols)], minlength=n_components)
    return int(np.count_nonzero((true_per >= 2) & (pred_per >= 2)))


THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


@pytest.mark.parametrize("dense_limit", [matching._DENSE_LIMIT, 0])
def test_random_images_match_brute_force(monkeypatch: pytest.MonkeyPatch, dense_limit: int) -> None:
    monkeypatch.setattr(matching, "_DENSE_LIMIT", dense_limit)
    rng = np.random.default_rng(20240531 + dense_limit)
    n_cases = 200 if dense_limit else 100
    general, ties_at_half = 0, 0
    for _ in range(n_cases):
        y_true, y_pred = _random_pair(rng)
        overlap = compute_overlap(y_true, y_pred)
        ties_at_half += int(np.count_nonzero(overlap.pair_iou == 0.5))
        for threshold, stats in zip(
            THRESHOLDS, evaluate_image(y_true, y_pred, THRESHOLDS), strict=True
        ):
            tp, fp, fn, sum_iou = _brute_force(y_true, y_pred, threshold, stardist_cost=False)
            assert _counts(stats) == (tp, fp, fn)
            assert stats.sum_matched_iou == pytest.approx(sum_iou, abs=1e-12)
            assert stats.mean_matched_iou == pytest.approx(sum_iou / tp if tp else 0.0)
            # StarDist's own cost also lets unreported sub-threshold IoUs break ties; that may
            # change which pairs are reported, never how many.
            assert stats.tp == _brute_force(y_true, y_pred, threshold, stardist_cost=True)[0]
            general += _general_components(overlap, threshold)
            _, _, ious = matched_pairs(overlap, threshold)
            assert ious.size == stats.tp
            assert np.all(ious >= threshold)
    # The assignment code (not just the shortcuts) must have been exercised.
    assert general >= 20
    assert ties_at_half >= 1


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def test_aggregate_per_image_and_pooled() -> None:
    # Image A: two perfect matches. Image B: one match at IoU 0.5, one miss, one false positive.
    a_true = np.zeros((4, 4), dtype=np.uint8)
    a_true[:2, :2] = 1
    a_true[2:, 2:] = 2
    b_true = np.zeros((4, 4), dtype=np.uint8)
    b_true[:, :2] = 1  # 8 pixels
    b_true[3, 3] = 2
    b_pred = np.zeros((4, 4), dtype=np.uint8)
    b_pred[:2, :2] = 5  # 4 pixels inside true 1: IoU 0.5
    b_pred[0, 3] = 6
    stats = [
        evaluate_image(a_true, a_true, [0.5, 0.75]),
        evaluate_image(b_true, b_pred, [0.5, 0.75]),
    ]
    scores = aggregate(stats)
    assert isinstance(scores, DatasetScores)
    assert scores.thresholds == (0.5, 0.75)
    assert scores.n_images == 2

    half = scores.per_image[0]
    assert half.ap_dsb == pytest.approx((1 + 1 / 3) / 2)
    assert half.precision == pytest.approx((1 + 1 / 2) / 2)
    assert half.recall == pytest.approx((1 + 1 / 2) / 2)
    assert half.f1 == pytest.approx((1 + 2 / 4) / 2)
    assert half.mean_matched_iou == pytest.approx((1 + 0.5) / 2)
    assert half.panoptic_quality == pytest.approx((1 + 0.5 / 2) / 2)

    pooled = scores.pooled[0]
    assert (pooled.tp, pooled.fp, pooled.fn, pooled.n_true, pooled.n_pred) == (3, 1, 1, 4, 4)
    assert pooled.sum_matched_iou == pytest.approx(2.5)
    assert pooled.ap_dsb == pytest.approx(3 / 5)
    assert pooled.precision == pooled.recall == pytest.approx(3 / 4)
    assert pooled.mean_matched_iou == pytest.approx(2.5 / 3)
    assert pooled.panoptic_quality == pytest.approx(2.5 / 4)

    assert scores.per_image[1].ap_dsb == pytest.approx(0.5)
    assert _counts(scores.pooled[1]) == (2, 2, 2)

    as_dict = scores.to_dict()
    assert set(as_dict) == {"thresholds", "n_images", "per_image", "pooled"}
    assert as_dict["per_image"][0]["ap_dsb"] == pytest.approx(2 / 3)
    assert as_dict["pooled"][0]["tp"] == 3


def test_aggregate_counts_empty_images_as_perfect() -> None:
    empty = np.zeros((3, 3), dtype=np.int32)
    full = np.ones((3, 3), dtype=np.int32)
    scores = aggregate(
        [evaluate_image(empty, empty, [0.5]), evaluate_image(full, np.zeros_like(full), [0.5])]
    )
    assert scores.per_image[0].ap_dsb == 0.5
    assert scores.pooled[0].ap_dsb == 0.0


def test_aggregate_rejects_bad_input() -> None:
    labels = np.ones((2, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="empty"):
        aggregate([])
    with pytest.raises(ValueError, match="thresholds"):
        aggregate([evaluate_image(labels, labels, [0.5]), evaluate_image(labels, labels, [0.6])])


def test_matching_stats_to_dict_and_validation() -> None:
    stats = MatchingStats(threshold=0.5, tp=2, fp=1, fn=3, n_true=5, n_pred=3, sum_matched_iou=1.5)
    as_dict = stats.to_dict()
    assert as_dict["f1"] == pytest.approx(4 / 8)
    assert as_dict["ap_dsb"] == pytest.approx(2 / 6)
    assert as_dict["panoptic_quality"] == pytest.approx(1.5 / 4)
    with pytest.raises(ValueError, match="inconsistent"):
        MatchingStats(threshold=0.5, tp=2, fp=1, fn=3, n_true=4, n_pred=3, sum_matched_iou=1.5)
