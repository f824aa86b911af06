"""DriftCheck's measures on the generator's scenarios, and PSI / annotation checks by hand."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_data_validation as tfdv

from components.drift_check import annotations, drift
from data import synth
from pipelines.settings import DriftSettings
from schemas import DEFAULT_SCHEMA_PATH, curate

SPAN_IMAGES = 400  # ~ what a small daily span holds; noise is larger than at 3,000
PSI_THRESHOLD = DriftSettings().psi_threshold  # the pipeline default


def test_psi_matches_a_hand_computed_value():
    # e = .5 .3 .2, a = .3 .3 .4:  (.3-.5) ln(.3/.5) + 0 + (.4-.2) ln(.4/.2)
    expected = -0.2 * np.log(0.6) + 0.2 * np.log(2.0)
    assert drift.psi([50, 30, 20], [3, 3, 4]) == pytest.approx(expected)
    assert drift.psi([1, 1], [1, 1]) == 0.0
    # An empty bin counts, but finitely (shares floored at PSI_FLOOR).
    assert np.isfinite(drift.psi([1, 0], [0, 1])) and drift.psi([1, 0], [0, 1]) > 5


def test_jensen_shannon_on_decile_bins():
    baseline = np.arange(100.0)
    assert drift.jensen_shannon(baseline, baseline) == 0.0
    # All mass in the top bin versus 10 % in each: by hand, log base 2.
    p, q = np.full(10, 0.1), np.eye(10)[9]
    m = (p + q) / 2
    expected = (np.sum(p * np.log2(p / m)) + np.log2(1 / m[9])) / 2
    assert drift.jensen_shannon(baseline, np.full(5, 1000.0)) == pytest.approx(expected)


def test_numeric_psi_bins_at_the_baseline_deciles():
    baseline = np.arange(100.0)  # deciles at 9.9, 19.8, ...: 10 values per bin
    assert drift.numeric_psi(baseline, baseline + 0.01) == 0.0
    # Everything above the top decile: one bin holds all, the other nine none.
    shifted = drift.numeric_psi(baseline, np.full(50, 1000.0))
    e, a = 0.1, drift.PSI_FLOOR
    assert shifted == pytest.approx(9 * (a - e) * np.log(a / e) + (1 - e) * np.log(1 / e))
    # A discrete feature: tied deciles merge, equal values stay in one bin for both spans.
    counts = np.repeat([1, 2, 3], [50, 30, 20])
    assert drift.numeric_psi(counts, np.repeat([1, 2, 3], [50, 30, 20])) == 0.0
    assert drift.numeric_psi(counts, np.repeat([1, 2, 3], [30, 30, 40])) == pytest.approx(
        drift.psi([50, 30, 20], [30, 30, 40]))


@pytest.fixture(scope="module")
def spans(tmp_path_factory) -> dict:
    """Statistics and boxes of generated spans: the default world at 4 seeds, and scenarios."""
    root = tmp_path_factory.mktemp("spans")
    schema = tfdv.load_schema_text(DEFAULT_SCHEMA_PATH)
    result = {"schema": schema}
    plans = {f"default-{seed}": ("default", seed) for seed in range(4)}
    plans.update({"night_heavy": ("night_heavy", 0), "new_camera": ("new_camera", 0),
                  "loose_boxes": ("loose_boxes", 0)})
    for name, (scenario, seed) in plans.items():
        path = str(synth.generate(root / name, SPAN_IMAGES, seed=seed, scenario=scenario))
        stats, _ = curate.statistics_of_dataset(path, schema, str(root / name / "split"))
        images = list(annotations.read_split(str(root / name / "split")))
        result[name] = {"stats": stats, "images": images}
    return result


def _compare(spans: dict, current: str, baseline: str = "default-0") -> dict:
    features = drift.compare(
        spans[current]["stats"], spans[baseline]["stats"], spans["schema"], PSI_THRESHOLD,
        annotations.feature_values(spans[current]["images"]),
        annotations.feature_values(spans[baseline]["images"]))
    return {f.feature: f for f in features}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_distribution_raises_no_drift(spans, seed):
    features = _compare(spans, f"default-{seed}")
    # Every comparator in the curated schema was applied, and box aspect (derived).
    assert len(features) == 8 and drift.BOX_ASPECT in features
    assert all({"PSI"} < set(f.measurements) for f in features.values())
    assert [f for f in features.values() if f.drifted] == []


def test_night_heavy_span_trips_brightness_and_lighting(spans):
    features = _compare(spans, "night_heavy")
    assert {"JS", "PSI"} <= set(features["stats/brightness"].drifted)
    assert {"L_inf", "PSI"} <= set(features["meta/lighting"].drifted)
    assert not features["meta/camera"].drifted


def test_new_camera_span_trips_camera(spans):
    features = _compare(spans, "new_camera")
    assert {"L_inf", "PSI"} <= set(features["meta/camera"].drifted)
    assert features["meta/camera"].measurements["L_inf"] > 0.5  # cam-d: 60 % of images
    assert not features["meta/lighting"].drifted


def test_looser_boxes_of_one_class_are_flagged_by_the_annotation_check(spans):
    names = curate.class_names()
    before = annotations.class_box_stats(spans["default-0"]["images"], names)
    for current, expected in (("loose_boxes", {"square"}), ("default-1", set())):
        now = annotations.class_box_stats(spans[current]["images"], names)
        changes = annotations.box_fit_changes(now, before, tolerance=0.3)
        assert set(changes) == expected, changes
    # ... while no feature-level comparator notices it.
    assert [f for f in _compare(spans, "loose_boxes").values() if f.drifted] == []


def _image(boxes, labels, size=100) -> annotations.ImageBoxes:
    return annotations.ImageBoxes("img-1", size, size, np.array(boxes, float).reshape(-1, 4),
                                  np.array(labels))



def test_duplicate_and_tiny_boxes_are_counted_with_example_ids():
    images = [
        _image([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.51], [0.1, 0.1, 0.5, 0.5]], [1, 1, 2]),
        annotations.ImageBoxes("img-2", 100, 100, np.array([[0.2, 0.2, 0.23, 0.6]]),
                               np.array([3])),
        annotations.ImageBoxes("img-3", 100, 100, np.zeros((0, 4)), np.zeros(0, int)),
    ]
    found = annotations.quality_findings(images, duplicate_iou=0.9, min_box_pixels=4)
    # Same class and IoU 0.975: a duplicate; the class-2 box on the same spot is not.
    assert found["duplicate_boxes"] == {"count": 1, "example_ids": ["img-1"]}
    assert found["tiny_boxes"] == {"count": 1, "example_ids": ["img-2"]}  # 3 px wide
