"""Blessing gates through the real DAG: known-good and degraded candidates, in order.

The Trainer is ``tests.oracle_trainer`` (a model that reads the GT and jitters it), so each
run takes seconds and the candidates' quality is known; everything else is the tiny
config's real pipeline, with ExampleGen and StatisticsGen cached after the first run.
"""

from __future__ import annotations

import json
import os

import pytest

from components.model_pusher import executor as pusher_executor
from pipelines import configs
from tests.oracle_trainer import run_tiny


def _run(home: str, *overrides: str) -> dict:
    summary = run_tiny(home, "enable_cache=true", *overrides)
    assert summary["status"] == "succeeded", summary.get("failure")
    return summary


@pytest.fixture(scope="module")
def gated_runs(tmp_path_factory) -> dict[str, dict]:
    """below the floor -> good -> degraded overall -> degraded on one camera only -> good."""
    home = str(tmp_path_factory.mktemp("gates"))
    return {
        "below_floor": _run(home, "train.oracle_jitter=0.05", "gates.map_floor=0.99"),
        "first": _run(home, "train.oracle_jitter=0.05", "gates.map_floor=0.5"),
        "degraded": _run(home, "train.oracle_jitter=0.6"),
        # The overall gate is opened wide: only the per-slice gate can stop this one.
        "one_camera": _run(home, "train.oracle_jitter=0.05", "gates.max_map_regression=1",
                           'train.oracle_camera_jitter={"cam-b": 0.8}'),
        "good_again": _run(home, "train.oracle_jitter=0.04"),
        "home": home,
    }


def test_without_a_baseline_the_floor_alone_blocks_a_model(gated_runs):
    below = gated_runs["below_floor"]
    assert below["evaluation"]["rubber_stamp"]
    assert below["blessed"] is False and below["pushed"]["pushed"] is False
    [failure] = below["evaluation"]["failed_thresholds"]
    assert failure["slice"] == "overall" and not failure["change"]
    assert f"mAP = {below['evaluation']['overall']['mAP']:.4f} is below the floor 0.9900" \
        in failure["message"]


def test_first_good_model_is_blessed_by_the_floor_alone(gated_runs):
    first = gated_runs["first"]
    assert first["evaluation"]["rubber_stamp"] and first["blessed"]
    assert first["evaluation"]["overall"]["mAP"] > 0.5  # the floor it passed
    assert first["pushed"]["pushed"]


def test_degraded_model_is_not_blessed_or_pushed_and_the_summary_says_why(gated_runs):
    degraded, first = gated_runs["degraded"], gated_runs["first"]
    assert degraded["status"] == "succeeded"  # a blocked model is a result, not a crash
    assert degraded["blessed"] is False and degraded["pushed"]["pushed"] is False
    evaluation = degraded["evaluation"]
    assert evaluation["baseline_overall"]["mAP"] == first["evaluation"]["overall"]["mAP"]
    [overall] = [f for f in evaluation["failed_thresholds"] if f["slice"] == "overall"]
    assert overall["metric"] == "mAP" and overall["change"]
    drop = evaluation["overall"]["mAP"] - first["evaluation"]["overall"]["mAP"]
    assert overall["value"] == pytest.approx(drop, abs=1e-3) and drop < -0.01
    assert "overall: mAP changed by" in evaluation["blocked_because"]
    assert "allows -0.0100" in evaluation["blocked_because"]


def test_a_slice_that_regresses_blocks_the_model_and_is_named(gated_runs):
    evaluation = gated_runs["one_camera"]["evaluation"]
    assert gated_runs["one_camera"]["blessed"] is False
    failures = evaluation["failed_thresholds"]
    assert {f["metric"] for f in failures} == {"slice_mAP"}  # overall mAP was allowed to drop
    # cam-a and cam-c are untouched; lighting slices may fail too (they hold cam-b images).
    cameras = {f["slice"] for f in failures if f["slice"].startswith("meta/camera")}
    assert cameras == {"meta/camera=cam-b"}, failures
    assert "meta/camera=cam-b: slice_mAP changed by -" in evaluation["blocked_because"]


def test_good_model_after_good_is_blessed_and_ships_its_thresholds(gated_runs):
    good = gated_runs["good_again"]
    evaluation = good["evaluation"]
    assert not evaluation["rubber_stamp"] and evaluation["failed_thresholds"] == []
    # The baseline is the latest *blessed* model: the first one, not the blocked ones.
    assert evaluation["baseline_overall"]["mAP"] == gated_runs["first"]["evaluation"][
        "overall"]["mAP"]
    assert good["blessed"] and good["pushed"]["pushed"]
    version_dir = os.path.join(configs.Paths(gated_runs["home"], "sightline-tiny")
                               .serving_model_dir, good["pushed"]["version"])
    with open(os.path.join(version_dir, pusher_executor.ASSETS_EXTRA,
                           pusher_executor.RELEASE_FILE)) as f:
        release = json.load(f)
    thresholds = release["score_thresholds"]
    overall = evaluation["overall"]
    assert thresholds and all(0 < t <= 1 for t in thresholds.values())
    assert {f"score_threshold/{c}" for c in thresholds} <= overall.keys()
    assert release["metrics"]["mAP"] == pytest.approx(overall["mAP"], abs=1e-4)
    assert release["dataset"]["eval"]["content_hash"] == good["examples"]["splits"]["eval"][
        "content_hash"]
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))


def test_report_of_a_blocked_run_names_the_gate_and_compares_with_the_baseline(gated_runs):
    from click.testing import CliRunner

    from pipelines.cli import main
    from pipelines.reports import evaluation as report

    degraded = gated_runs["degraded"]
    out = os.path.join(gated_runs["home"], "report")
    result = CliRunner().invoke(main, ["report", degraded["run_id"], "--home", gated_runs["home"],
                                       "--out", out])
    assert result.exit_code == 0, result.output
    with open(os.path.join(out, "report.json")) as f:
        data = json.load(f)
    assert data["blessed"] is False and data["has_baseline"]
    assert data["failed_thresholds"][0]["slice"] == "overall"  # the headline failure first
    [map_row] = [r for r in data["overall"] if r["metric"] == "mAP"]
    first_map = gated_runs["first"]["evaluation"]["overall"]["mAP"]
    assert map_row["baseline"] == pytest.approx(first_map, abs=1e-4)
    assert map_row["change"] == pytest.approx(map_row["value"] - first_map, abs=2e-4)
    # 9 eval images: classes with < 10 objects are "too few", the others have numbers.
    for row in data["classes"]:
        assert ("too_few" in row) == (row["objects"] < report.MIN_CLASS_OBJECTS)
        assert "too_few" in row or 0 <= row["AP"] <= 1
    assert set(data["pr_curves"]) == {r["class"] for r in data["classes"] if "too_few" not in r}
    assert sum(data["reliability"]["count"]) > 0
    with open(os.path.join(out, "report.html")) as f:
        page = f.read()
    assert "not blessed" in page and "overall: mAP changed by" in page
    assert page.count("data:image/png;base64,") == 4  # slices, class AP, PR, reliability


def _eval_split(examples_uri: str) -> list[bytes]:
    import glob

    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(examples_uri, "Split-eval", "*")))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _features(serialized: bytes) -> dict:
    import numpy as np
    import tensorflow as tf

    features = tf.train.Example.FromString(serialized).features.feature
    return {key: np.array(getattr(f, f.WhichOneof("kind")).value) for key, f in features.items()}


def test_evaluator_numbers_equal_pycocotools_on_the_same_detections(gated_runs):
    """The TFX Evaluator's overall numbers for the first model, recomputed by pycocotools."""
    import numpy as np
    from tfx.utils import path_utils

    from components.coco_eval import metric
    from tests.detection_outputs import outputs_from_rows
    from tests.test_coco_eval import detect, pycocotools_summary

    first = gated_runs["first"]
    serialized = _eval_split(first["examples"]["uri"])
    no_detections = outputs_from_rows(np.zeros((0, 6)), [0])
    images = [metric.image_data(_features(s), no_detections) for s in serialized]
    images = detect(path_utils.serving_model_path(first["model"]["uri"]), serialized, images)
    images.sort(key=lambda im: (len(im.image_id), im.image_id))  # as the metric orders them
    class_names = json.loads(first["model"]["hparams"]["class_names"])
    expected = pycocotools_summary(images, len(class_names))
    overall = first["evaluation"]["overall"]
    names = ("mAP", *metric.STAT_NAMES)
    for name, value in zip(names, expected.stats, strict=True):
        assert overall[name] == pytest.approx(value, abs=1e-4), name
    for name, ap in zip(class_names, expected.class_ap, strict=True):
        assert overall.get(f"AP/{name}", -1) == pytest.approx(ap, abs=1e-4), name
