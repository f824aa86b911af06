"""sightline monitor, fast tier: windows, statistics and skew, prediction summaries, alarms,
the report's escaping and the command's exit codes on bad input (no pipeline run)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_data_validation as tfdv
from click.testing import CliRunner

from data import feature_spec as fs
from pipelines.cli import main
from pipelines.cli.monitor import EXIT_INPUT
from pipelines.monitoring import checks, monitor, traffic
from pipelines.reports import monitoring as monitoring_report
from pipelines.settings import MonitorSettings
from schemas import DEFAULT_SCHEMA_PATH
from serving.log_reader import Detections

SETTINGS = MonitorSettings()
CAMERA, LIGHTING = fs.meta_key("camera"), fs.meta_key("lighting")


def images(n: int, seed: int, brightness: float = 0.5, cameras=("cam-a", "cam-b"),
           score_scale: float = 1.0) -> list[traffic.ServedImage]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        scores = np.sort(rng.uniform(0, 1, 4))[::-1] * score_scale
        rows.append(traffic.ServedImage(
            0, "", {fs.STATS_BRIGHTNESS: rng.normal(brightness, 0.08),
                    fs.STATS_CONTRAST: rng.normal(0.2, 0.03),
                    fs.IMAGE_HEIGHT: float(rng.integers(256, 385)),
                    fs.IMAGE_WIDTH: float(rng.integers(256, 385))},
            {"camera": str(rng.choice(cameras)), "lighting": "day"},
            Detections(np.tile([0.1, 0.1, 0.5, 0.5], (4, 1)), scores,
                       rng.integers(1, 3, 4))))
    return rows


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("1h", 3600),
                                          (" 2d ", 172800)])
def test_window_lengths_parse(text, seconds):
    assert traffic.parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "0h", "1w", "-1h", "1.5h"])
def test_bad_window_is_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="unit s, m, h or d"):
        traffic.parse_window(text)


def schema():
    return checks.monitor_schema(tfdv.load_schema_text(DEFAULT_SCHEMA_PATH), SETTINGS)


def test_monitor_schema_keeps_serving_features_with_the_settings_thresholds():
    narrowed = schema()
    names = {f.name: f for f in narrowed.feature}
    assert set(names) == {*checks.NUMERIC_FEATURES, *fs.META_KEYS}
    assert names[CAMERA].skew_comparator.infinity_norm.threshold == SETTINGS.linf_threshold
    assert names[fs.STATS_BRIGHTNESS].skew_comparator.jensen_shannon_divergence.threshold == \
        SETTINGS.js_threshold
    assert names[CAMERA].presence.min_fraction == 0.0
    without_lighting = checks.monitor_schema(tfdv.load_schema_text(DEFAULT_SCHEMA_PATH),
                                             SETTINGS, [CAMERA, fs.STATS_BRIGHTNESS])
    assert {f.name for f in without_lighting.feature} == {fs.STATS_BRIGHTNESS, CAMERA}


def stats_of(rows):
    values = checks.feature_values(rows)
    return checks.statistics(values, len(rows), schema()), values


def skew_of(training, serving):
    train_stats, train_values = stats_of(training)
    serve_stats, serve_values = stats_of(serving)
    found = checks.skew(train_stats, serve_stats, schema(), train_values, serve_values,
                        SETTINGS)
    return {f.feature: f for f in found}


def test_same_distribution_has_no_skew_and_darker_images_do():
    same = skew_of(images(300, 0), images(300, 1))
    assert not any(f.drifted for f in same.values()), same
    assert set(same[fs.STATS_BRIGHTNESS].measurements) == {"JS", "PSI"}
    assert set(same[CAMERA].measurements) == {"L_inf", "PSI"}
    dark = skew_of(images(300, 0), images(300, 1, brightness=0.3))
    assert dark[fs.STATS_BRIGHTNESS].drifted == ["JS", "PSI"]
    assert not dark[fs.STATS_CONTRAST].drifted


def test_unknown_camera_is_a_schema_anomaly_and_skew():
    serving = images(300, 1, cameras=("cam-a", "cam-z"))
    serve_stats, _ = stats_of(serving)
    anomalies = checks.schema_anomalies(serve_stats, schema())
    assert list(anomalies) == [CAMERA] and "cam-z" in anomalies[CAMERA]
    assert "L_inf" in skew_of(images(300, 0), serving)[CAMERA].drifted


def test_images_without_logged_bytes_count_for_meta_only():
    rows = images(10, 0)
    for row in rows[:4]:
        row.stats = None
    values = checks.feature_values(rows)
    assert len(values[fs.STATS_BRIGHTNESS]) == 6 and len(values[CAMERA]) == 10
    stats = checks.statistics(values, len(rows), schema())
    assert stats.datasets[0].num_examples == 10


def test_thresholds_are_raised_to_the_chance_level_of_small_samples():
    floor = checks.noise_floor(54, 71)
    assert floor["PSI"] == pytest.approx(27.88 * (1 / 54 + 1 / 71))
    assert floor["JS"] == pytest.approx(floor["PSI"] / (8 * np.log(2)))
    found = checks.FeatureDrift("f", {"PSI": 0.4, "JS": 0.05}, {"PSI": 0.25, "JS": 0.1}, [])
    assert checks.judged(found, 54, 71).drifted == []  # 0.4 is chance at these sizes
    assert checks.judged(found, 3000, 3000).drifted == ["PSI"]  # the setting rules
    assert checks.judged(found, 3000, 3000).thresholds == {"PSI": 0.25, "JS": 0.1}


def test_predictions_apply_each_class_threshold():
    found = Detections(np.zeros((3, 4)), np.array([0.9, 0.5, 0.4]), np.array([1, 2, 2]))
    nothing = Detections(np.zeros((1, 4)), np.array([0.2]), np.array([1]))
    summary = checks.predictions([found, nothing], ["circle", "square"],
                                 {"circle": 0.8, "square": 0.45})
    assert summary.per_image.tolist() == [2, 0]
    assert summary.classes.tolist() == ["circle", "square"]
    assert summary.scores.tolist() == [0.9, 0.5, 0.4, 0.2]
    assert summary.empty_share == 0.5


def prediction_drift(current, reference):
    names, thresholds = ["circle", "square"], {"circle": 0.5, "square": 0.5}
    summary = lambda rows: checks.predictions([r.detections for r in rows], names,  # noqa: E731
                                              thresholds)
    return {f.feature: f for f in checks.compare_predictions(summary(current),
                                                             summary(reference), SETTINGS)}


def test_scaled_scores_are_prediction_drift_and_same_scores_are_not():
    same = prediction_drift(images(300, 1), images(300, 0))
    assert not any(f.drifted for f in same.values()), same
    shifted = prediction_drift(images(300, 1, score_scale=0.6), images(300, 0))
    assert "JS" in shifted[checks.SCORES].drifted
    assert shifted[checks.EMPTY_SHARE].drifted == ["abs_change"]


def test_a_new_camera_slice_is_reported_and_known_ones_compared():
    current = images(300, 1, cameras=("cam-a", "cam-d"))
    found = {s.name: s for s in checks.slices(current, images(300, 0), [], ["circle"], {},
                                              SETTINGS)}
    assert found[f"{CAMERA}=cam-d"].new
    known = found[f"{CAMERA}=cam-a"]
    assert not known.new and {f.feature for f in known.findings} == set(checks.SLICE_NUMERIC)


def report(**changes) -> dict:
    base = {
        "model": "det<script>", "version": 3,
        "baseline": {"training_statistics": "/x/FeatureStats.pb", "score_thresholds": {}},
        "window": {"seconds": 3600, "start": 0, "end": 3600, "images": 200,
                   "images_with_bytes": 200, "previous_images": 0, "older_images": 0,
                   "enough_images": True},
        "logs": {"files": 1, "records": 25, "unreadable": [], "answers_seen": {}},
        "settings": {"min_window_images": 100, "min_slice_images": 100},
        "skew": [{"feature": CAMERA, "measurements": {"L_inf": 0.4, "PSI": 2.0},
                  "thresholds": {"L_inf": 0.15, "PSI": 0.25}, "drifted": ["L_inf", "PSI"]}],
        "schema_anomalies": {CAMERA: "Unexpected string values: <b>cam-d</b>"},
        "drift": [], "predictions": {"current": {}, "vs_evaluation": [], "vs_previous": []},
        "slices": [{"slice": f"{CAMERA}=<i>cam-d</i>", "images": 120, "training_images": 0,
                    "new_in_serving": True, "features": []}],
        "labels": None, "histograms": {},
    }
    base.update(changes)
    base["alarms"] = monitor.alarms(base, SETTINGS)
    base["alarm"] = bool(base["alarms"])
    return base


def test_alarms_name_check_feature_value_and_threshold():
    alarms = report()["alarms"]
    assert f"skew: {CAMERA} L_inf 0.400 > 0.15" in alarms
    assert any(a.startswith(f"schema (SERVING): {CAMERA}") for a in alarms)
    assert any("cam-d" in a and "never had" in a for a in alarms)


def test_a_small_window_is_shown_but_does_not_alarm():
    small = report(window={**report()["window"], "images": 20, "enough_images": False})
    assert small["alarms"] == []
    assert "Only 20 images" in monitoring_report.render_html(small)


def test_report_escapes_text_from_logs_and_metadata(tmp_path):
    html_path, json_path = monitoring_report.write(report(), str(tmp_path))
    page = open(html_path).read()
    assert "<script>" not in page and "det&lt;script&gt;" in page
    assert "<b>cam-d</b>" not in page and "<i>cam-d</i>" not in page
    assert "ALARM" in page


def test_missing_store_and_missing_logs_exit_with_the_input_status(tmp_path):
    from pipelines import metadata_store

    home = str(tmp_path / "home")
    args = ["monitor", "--logs", str(tmp_path / "none"), "--home", home]
    no_store = CliRunner().invoke(main, args)
    assert no_store.exit_code == EXIT_INPUT and "no ML Metadata store" in no_store.output
    metadata_store.open_store(metadata_store.connection_config(None, home))
    no_logs = CliRunner().invoke(main, args)
    assert no_logs.exit_code == EXIT_INPUT, no_logs.output
    assert "no request-log files" in no_logs.output


def test_bad_window_and_missing_labels_exit_with_the_input_status(tmp_path):
    bad = CliRunner().invoke(main, ["monitor", "--logs", str(tmp_path), "--window", "1w"])
    assert bad.exit_code == EXIT_INPUT and "--window" in bad.output
    labels = CliRunner().invoke(main, ["monitor", "--logs", str(tmp_path), "--labels",
                                       str(tmp_path / "gone.json")])
    assert labels.exit_code == EXIT_INPUT and "gone.json: no such file" in labels.output
