"""components.coco_eval.calibration: hand-computed cases, and pycocotools' matching as oracle."""

from __future__ import annotations

import numpy as np
import pytest

from components.coco_eval import calibration, cocoeval
from tests.test_coco_eval import (
    NUM_CLASSES,
    _image,
    oracle_ece,
    oracle_threshold,
    pycocotools_matches_at_50,
    random_images,
)


def test_hand_computed_dece_and_threshold():
    """Two GT; detections 0.95 (hit), 0.85 (miss), 0.65 (hit).

    Kept at >= 0.95: P 1, R .5, F1 .667; >= 0.85: P .5, R .5, F1 .5; >= 0.65: P .667, R 1,
    F1 .8 -> threshold 0.65. Bins 9, 8, 6 hold one detection each: |1-.95|, |0-.85|,
    |1-.65| -> D-ECE (.05 + .85 + .35) / 3. (Scores are float32 like the model's: 0.9
    would be 0.8999999762 and fall in bin 8.)
    """
    image = _image(
        gt_boxes=[[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]], gt_classes=[1, 1],
        gt_areas=[655, 1474], gt_crowd=[0, 0],
        det_boxes=[[0.1, 0.1, 0.3, 0.3], [0.4, 0.0, 0.5, 0.1], [0.6, 0.6, 0.9, 0.9]],
        det_classes=[1, 1, 1], det_scores=[0.95, 0.85, 0.65],
    )
    result = calibration.calibrate(cocoeval.match_images([image], 1))
    assert result.ece == pytest.approx((0.05 + 0.85 + 0.35) / 3, abs=1e-6)
    assert result.class_threshold[0] == pytest.approx(0.65)
    assert result.class_f1[0] == pytest.approx(0.8)
    assert result.bin_count.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 1, 1]
    assert result.bin_precision[[6, 8, 9]].tolist() == [1.0, 0.0, 1.0]
    assert result.bin_score[0] == -1  # empty bins are marked, not 0


def test_equal_scores_are_kept_or_dropped_together():
    scores = np.array([0.9, 0.5, 0.5, 0.5])
    right = np.array([True, False, False, True])
    # Cutting between the tied 0.5s would be F1 2*2/(3+2) = .8 but is not a real threshold.
    threshold, f1 = calibration.max_f1_threshold(scores, right, num_gt=2)
    assert (threshold, f1) == (pytest.approx(0.9), pytest.approx(2 / 3))


def test_no_right_detection_keeps_none_and_no_gt_is_undefined():
    assert calibration.max_f1_threshold(np.array([0.7]), np.array([False]), 3) == (
        calibration.NEVER, 0.0)
    assert calibration.max_f1_threshold(np.zeros(0), np.zeros(0, bool), 3) == (
        calibration.NEVER, 0.0)
    assert calibration.max_f1_threshold(np.array([0.7]), np.array([False]), 0) == (-1.0, -1.0)
    assert calibration.expected_calibration_error(np.zeros(0), np.zeros(0, bool)) == -1.0


@pytest.mark.parametrize("seed", range(6))
def test_matches_pycocotools_matching(seed):
    """Crowd, area-range, >100 detections and tie cases of the COCOeval tests, same answers
    as when computed from pycocotools' own evaluateImg output (dtMatches/dtIgnore)."""
    images = random_images(seed)
    oracle = pycocotools_matches_at_50(images, NUM_CLASSES)
    result = calibration.calibrate(cocoeval.match_images(images, NUM_CLASSES))
    all_scores = np.concatenate([s for s, _, _ in oracle])
    all_right = np.concatenate([r for _, r, _ in oracle])
    assert result.ece == pytest.approx(oracle_ece(all_scores, all_right), abs=1e-9)
    assert result.bin_count.sum() == len(all_scores)
    for k, (scores, right, num_gt) in enumerate(oracle):
        assert result.class_ece[k] == pytest.approx(oracle_ece(scores, right), abs=1e-9)
        threshold, f1 = oracle_threshold(scores, right, num_gt)
        assert result.class_threshold[k] == pytest.approx(threshold, abs=1e-9)
        assert result.class_f1[k] == pytest.approx(f1, abs=1e-9)
