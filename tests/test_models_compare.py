"""``sightline models compare``: pairing, matching, agreement, score shift, latency, from
request logs written by the server's own RequestLogger."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipelines.registry import compare, rules
from pipelines.settings import ReleaseSettings
from serving import log_reader
from serving.metrics import Metrics
from serving.model_config import LoggingSettings
from serving.request_log import RequestLogger

CLASSES = ["circle", "square"]
# Two detections per image: a circle and a square, normalized yxyx.
BOXES = np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.8]], np.float32)


def image(i: int) -> bytes:
    return f"image-{i}".encode()


def outputs(boxes: np.ndarray, scores: list[float], classes: list[int]) -> dict:
    k = 4  # padded like the detector: rows past num_detections are junk
    padded = np.zeros((1, k, 4), np.float32)
    padded[0, :len(boxes)] = boxes
    padded[0, len(boxes):] = [0.0, 0.0, 1.0, 1.0]
    return {"detection_boxes": padded,
            "detection_scores": np.array([scores + [0.99] * (k - len(scores))], np.float32),
            "detection_classes": np.array([classes + [1] * (k - len(classes))], np.float32),
            "num_detections": np.array([len(scores)], np.float32)}


def inputs(i: int) -> dict:
    array = np.empty(1, dtype=object)
    array[:] = [image(i)]
    return {"images": array}


@pytest.fixture
def logger(tmp_path):
    log = RequestLogger("det", LoggingSettings(str(tmp_path / "logs" / "det"), 1.0), Metrics())
    yield log
    log.close()


def written(logger, tmp_path) -> list[str]:
    logger.close()
    return log_reader.log_files([str(tmp_path / "logs")])


def report_of(files, baseline=1, candidate=2, min_score=0.3) -> dict:
    read = compare.read_logs(files, "det", (baseline, candidate), min_score)
    return compare.compare(read, "det", baseline, candidate, CLASSES, min_score)


def test_shadow_pairs_give_agreement_score_shift_and_latency(logger, tmp_path):
    for i in range(12):
        rid = f"{i:032x}"
        logger.log(1, "serving_default", inputs(i), outputs(BOXES, [0.8, 0.6], [1, 2]),
                   request_id=rid, role="primary", route="stable", latency=0.010)
        if i < 3:  # the canary misses the square on three images
            canary = outputs(BOXES[:1] + 0.01, [0.82], [1])
        else:  # same boxes shifted a little (IoU > 0.5), circle scored 0.02 higher
            canary = outputs(BOXES + 0.01, [0.82, 0.6], [1, 2])
        logger.log(2, "serving_default", inputs(i), canary, request_id=rid, role="shadow",
                   route="shadow", latency=0.020)
    logger.log(3, "serving_default", inputs(0), outputs(BOXES, [0.8, 0.6], [1, 2]))
    report = report_of(written(logger, tmp_path))
    assert report["mode"] == "shadow"
    assert report["requests"] == {"baseline": 12, "candidate": 12, "candidate_shadow": 12,
                                  "candidate_primary": 0, "paired": 12}
    assert report["pairs_by"] == {"request": 12, "image": 0}
    assert (report["images_paired"], report["images_agreeing"]) == (12, 9)
    assert report["agreement"] == 0.75
    circle, square = report["classes"]["circle"], report["classes"]["square"]
    assert circle["matched"] == 12 and circle["score_shift"] == pytest.approx(0.02, abs=1e-4)
    assert circle["gated"] and circle["shift_from"] == "matched detections"
    assert square["matched"] == 9 and square["unmatched_baseline"] == 3
    assert square["score_shift"] == pytest.approx(0.0, abs=1e-6)
    assert square["gated"] is False  # 9 < MIN_CLASS_OBSERVATIONS: reported, not gated
    assert report["latency_ms"]["1"]["p50"] == pytest.approx(10.0)
    assert report["latency_ms"]["2"]["p50"] == pytest.approx(20.0)
    assert report["latency_ratio"] == pytest.approx(2.0)
    assert report["logs"]["other_versions"] == 1
    settings = ReleaseSettings(min_compare_requests=10)
    problems = rules.check_report(report, settings)
    assert len(problems) == 2
    assert "detections agree on 75.0% of 12 paired images; release.min_agreement is 90%" \
        in problems[0]
    assert "median latency is 2.00x the stable version's" in problems[1]
    strict = ReleaseSettings(min_compare_requests=50, max_latency_ratio=3, min_agreement=0.7,
                             max_score_shift=0.01)
    assert rules.check_report(report, strict) == [
        "it covers 12 shadow-paired requests; release.min_compare_requests is 50",
        "class 'circle': mean score shifted by +0.020; release.max_score_shift is 0.01"]


def test_canary_traffic_without_shared_images_compares_score_distributions(logger, tmp_path):
    for i in range(20):
        logger.log(1, "serving_default", inputs(i), outputs(BOXES, [0.8, 0.6], [1, 2]),
                   request_id=f"a{i}", role="primary", route="stable", latency=0.01)
        logger.log(2, "serving_default", inputs(100 + i), outputs(BOXES, [0.7, 0.6], [1, 2]),
                   request_id=f"b{i}", role="primary", route="canary", latency=0.01)
    report = report_of(written(logger, tmp_path))
    assert report["mode"] == "canary"
    assert report["agreement"] is None and report["images_paired"] == 0
    assert report["requests"]["candidate"] == 20
    circle = report["classes"]["circle"]
    assert circle["score_shift"] == pytest.approx(-0.1, abs=1e-4)
    assert circle["shift_from"].startswith("score distributions")
    assert rules.check_report(report, ReleaseSettings(min_compare_requests=20)) == [
        "class 'circle': mean score shifted by -0.100; release.max_score_shift is 0.05"]


def test_the_same_image_answered_by_both_pairs_by_digest(logger, tmp_path):
    logger.log(1, "serving_default", inputs(7), outputs(BOXES, [0.8, 0.6], [1, 2]))
    logger.log(2, "serving_default", inputs(7), outputs(BOXES, [0.8, 0.6], [2, 1]),
               route="canary")  # classes swapped: boxes overlap, classes differ
    logger.log(2, "serving_default", inputs(8), outputs(BOXES, [0.8, 0.6], [1, 2]))
    report = report_of(written(logger, tmp_path))
    assert report["pairs_by"] == {"request": 0, "image": 1}
    assert report["agreement"] == 0.0
    assert report["classes"]["circle"]["matched"] == 0


def test_low_scores_are_left_out_and_a_cut_file_is_read_up_to_the_cut(logger, tmp_path):
    logger.log(1, "serving_default", inputs(1), outputs(BOXES, [0.8, 0.1], [1, 2]),
               request_id="r", role="primary")
    logger.log(2, "serving_default", inputs(1), outputs(BOXES[:1], [0.8], [1]),
               request_id="r", role="shadow")
    [path] = written(logger, tmp_path)
    with open(path, "ab") as f:
        f.write(b"\x10\x00\x00")  # a record being written when the file was read
    report = report_of([path])
    assert report["agreement"] == 1.0  # the 0.1 square is below min_score
    assert report["logs"]["records"] == 2
    assert "truncated TFRecord header" in report["logs"]["unreadable"][0]


def test_match_needs_the_class_and_iou_at_least_half():
    def item(boxes, classes):
        return compare.Item(1, "primary", "", 0, "", np.array(boxes, float),
                            np.full(len(boxes), 0.9), np.array(classes))

    base = item([[0.0, 0.0, 1.0, 1.0]], [1])
    assert compare.match(base, item([[0.0, 0.0, 1.0, 0.6]], [1])) == [(0, 0)]  # IoU 0.6
    assert compare.match(base, item([[0.0, 0.0, 1.0, 0.4]], [1])) == []  # IoU 0.4
    assert compare.match(base, item([[0.0, 0.0, 1.0, 1.0]], [2])) == []  # other class
    two = item([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.52, 0.52]], [1, 1])
    one = item([[0.0, 0.0, 0.52, 0.52]], [1])
    assert compare.match(two, one) == [(1, 0)]  # best overlap first, used once


def test_digests_come_from_the_log_not_the_bytes(logger, tmp_path):
    logger.log(1, "serving_default", inputs(3), outputs(BOXES, [0.8, 0.6], [1, 2]))
    read = compare.read_logs(written(logger, tmp_path), "det", (1, 2), 0.3)
    assert read.items[0].digest == hashlib.sha256(image(3)).hexdigest()
