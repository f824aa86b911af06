"""Detection calibration (D-ECE) and per-class score thresholds, from COCOeval's matching.

A detector is calibrated when, among detections scored ~0.7, ~70 % are right. "Right"
uses COCOeval's own matching at IoU 0.5 (area "all", the 100 best per image and class),
so calibration and mAP agree on which detection found which object; detections matched to
crowd regions are ignored, as COCOeval ignores them.

* **D-ECE** (Küppers et al., 2020): detections are binned by score into ``NUM_BINS``
  equal-width bins; D-ECE = sum over bins of (share of detections) x |precision - mean
  score|. 0 is perfectly calibrated.
* **Score threshold** per class: the score that maximizes F1 (precision vs recall of that
  class's objects) when only detections scoring at least that much are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from components.coco_eval.cocoeval import ALL, Matches

NUM_BINS = 10
_IOU_50 = 0  # index of IoU 0.5 in cocoeval.IOU_THRESHOLDS
# When no detection of a class is ever right, keeping none is best: no score reaches 1.0+.
NEVER = 1.0


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Calibration over a set of images; -1 where there is nothing to measure."""

    ece: float  # over all classes' detections; -1 without detections
    class_ece: np.ndarray  # [num_classes]; -1 for a class without detections
    class_threshold: np.ndarray  # [num_classes] max-F1 score; -1 for a class without GT
    class_f1: np.ndarray  # [num_classes] F1 at that threshold; -1 for a class without GT
    bin_count: np.ndarray  # [NUM_BINS] detections per score bin, all classes
    bin_score: np.ndarray  # [NUM_BINS] their mean score; -1 for an empty bin
    bin_precision: np.ndarray  # [NUM_BINS] the share of them that are right; -1 if empty


def _scored(entries: Sequence[Matches]) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, right) of a class's counted detections at IoU .5, and its GT count."""
    if not entries:
        return np.zeros(0), np.zeros(0, bool), 0
    scores = np.concatenate([e.scores for e in entries])
    matched = np.concatenate([e.matched[ALL, _IOU_50] for e in entries])
    counted = ~np.concatenate([e.ignored[ALL, _IOU_50] for e in entries])
    num_gt = int(sum(e.num_gt[ALL] for e in entries))
    return scores[counted], matched[counted], num_gt


def _bins(scores: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per score bin: count, mean score (-1 if empty), precision (-1 if empty)."""
    index = np.minimum((scores * NUM_BINS).astype(int), NUM_BINS - 1)
    count = np.bincount(index, minlength=NUM_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.bincount(index, weights=scores, minlength=NUM_BINS) / count
        precision = np.bincount(index, weights=right, minlength=NUM_BINS) / count
    return count, np.where(count > 0, score, -1.0), np.where(count > 0, precision, -1.0)


def expected_calibration_error(scores: np.ndarray, right: np.ndarray) -> float:
    """D-ECE of detections with these scores and correctness; -1 without detections."""
    if not len(scores):
        return -1.0
    count, score, precision = _bins(scores, right)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(precision[filled] - score[filled])) / len(scores))


def max_f1_threshold(scores: np.ndarray, right: np.ndarray, num_gt: int) -> tuple[float, float]:
    """(threshold, F1): keeping detections scoring >= threshold maximizes F1; (-1, -1) w/o GT.

    Equal scores are kept or dropped together. Among cuts with equal F1 the highest
    threshold wins: it keeps fewer detections for the same F1.
    """
    if num_gt == 0:
        return -1.0, -1.0
    order = np.argsort(-scores, kind="mergesort")
    scores, right = scores[order], right[order]
    tp = np.cumsum(right)
    kept = np.arange(1, len(scores) + 1)
    f1 = 2 * tp / (kept + num_gt)  # 2PR / (P + R) with P = tp / kept, R = tp / num_gt
    # A cut can only fall after the last of equal scores.
    f1 = np.where(np.r_[scores[1:] != scores[:-1], True], f1, -1.0)
    if not len(scores) or f1.max() <= 0:
        return NEVER, 0.0
    best = int(np.argmax(f1))
    return float(scores[best]), float(f1[best])


def calibrate(per_class: Sequence[Sequence[Matches]]) -> Calibration:
    """Calibration and thresholds from ``cocoeval.match_images``' result."""
    scored = [_scored(entries) for entries in per_class]
    all_scores = np.concatenate([s for s, _, _ in scored]) if scored else np.zeros(0)
    all_right = np.concatenate([r for _, r, _ in scored]) if scored else np.zeros(0, bool)
    thresholds = np.array([max_f1_threshold(*item) for item in scored]).reshape(-1, 2)
    count, score, precision = _bins(all_scores, all_right)
    return Calibration(
        ece=expected_calibration_error(all_scores, all_right),
        class_ece=np.array([expected_calibration_error(s, r) for s, r, _ in scored]),
        class_threshold=thresholds[:, 0],
        class_f1=thresholds[:, 1],
        bin_count=count,
        bin_score=score,
        bin_precision=precision,
    )
