"""sightline monitor on real traffic: data/synth.py scenarios served by the real server with
request logging (images included), against the session's real tiny pipeline run (its
model, training statistics and evaluation in ML Metadata). Slow: ~2,000 served images.

The tiny run trains on ~38 images, so the monitor raises the skew thresholds to the
chance level of that sample (L-inf ~0.28, JS ~0.15): these tests prove the wiring and
that the scenarios' shifts are caught; the thresholds themselves were measured on a
400-image run (docs/monitoring.md)."""

from __future__ import annotations

import glob
import json
import os
import time

import pytest
from click.testing import CliRunner

from data import feature_spec as fs
from pipelines.cli import main
from pipelines.cli.monitor import EXIT_ALARM, EXIT_INPUT, EXIT_OK
from tests import monitor_traffic as traffic

pytestmark = pytest.mark.slow
TRAFFIC_IMAGES = 200  # per window: twice min_window_images; 133 s for the six tests here
SCORE_SHIFT = 0.5  # the shifted model's scores: s -> s + (1 - s) * SCORE_SHIFT


@pytest.fixture(scope="module")
def served(tiny_run) -> dict:
    """The session's real tiny pipeline run (MLMD, training statistics, evaluation) and
    its pushed version: home, base path, model name, version."""
    home, summary = tiny_run
    [base_path] = glob.glob(os.path.join(home, "serving", "*"))
    version = str(summary["pushed"]["version"])
    assert os.path.isdir(os.path.join(base_path, version))
    return {"home": home, "base_path": base_path, "model": os.path.basename(base_path),
            "version": version}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Generated traffic datasets, made once per module: ``generated(scenario, seed)``."""
    root = tmp_path_factory.mktemp("traffic")
    return lambda scenario, seed: traffic.dataset(root, scenario, seed, TRAFFIC_IMAGES)


def monitor(served: dict, logs: str, *args: str) -> tuple[int, dict, str]:
    """Runs the command; its exit code, report.json and output."""
    out = os.path.join(logs, "report")
    result = CliRunner().invoke(main, ["monitor", "--logs", logs, "--home", served["home"],
                                       "--out", out, *args])
    assert result.exit_code in (EXIT_OK, EXIT_ALARM), result.output
    with open(os.path.join(out, "report.json")) as f:
        return result.exit_code, json.load(f), result.output


def log(served: dict, tmp_path, *datasets: tuple[str, bool], base_path: str | None = None
        ) -> str:
    logs = str(tmp_path / "logs")
    traffic.serve_and_log(base_path or served["base_path"], served["model"], logs,
                          list(datasets))
    return logs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_default_world_traffic_raises_no_alarm(served, generated, tmp_path, seed):
    labels = generated("default", seed)
    logs = log(served, tmp_path, (labels, False))
    code, report, output = monitor(served, logs, "--labels", labels)
    assert code == EXIT_OK, report["alarms"]
    assert report["window"]["images"] == TRAFFIC_IMAGES
    assert report["version"] == int(served["version"])
    assert {f["feature"] for f in report["skew"]} >= {fs.STATS_BRIGHTNESS, fs.meta_key("camera")}
    assert report["labels"]["matched"] == TRAFFIC_IMAGES
    assert "OK" in output
    assert_recorded(served, report, os.path.join(logs, "report"))


def assert_recorded(served: dict, report: dict, out_dir: str) -> None:
    """The baseline came from the real run's MLMD, and the run is linked to its model."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from pipelines.monitoring.monitor import MONITOR_RUN
    from pipelines.reports import runs

    baseline = report["baseline"]
    assert os.path.isfile(baseline["training_statistics"])
    assert baseline["evaluation_artifact_id"] is not None and baseline["class_names"]
    store = runs.connect(os.path.join(served["home"], "metadata.sqlite"))
    [execution] = [e for e in store.get_executions_by_type(MONITOR_RUN)
                   if e.properties["report"].string_value == out_dir]
    events = store.get_events_by_execution_ids([execution.id])
    inputs = {e.path.steps[0].key: e.artifact_id for e in events if e.type == pb.Event.INPUT}
    assert inputs["pushed_model"] == baseline["pushed_model_artifact_id"]
    assert inputs["training_statistics"] == baseline["statistics_artifact_id"]
    [output] = [e.artifact_id for e in events if e.type == pb.Event.OUTPUT]
    assert store.get_artifacts_by_id([output])[0].uri == out_dir
    assert execution.properties["alarm"].int_value == int(report["alarm"])


def test_night_heavy_traffic_trips_lighting_and_brightness(served, generated, tmp_path):
    """Default traffic, then night-heavy: skew against training, and drift against the
    default window before it."""
    logs = str(tmp_path / "logs")
    traffic.serve_and_log(served["base_path"], served["model"], logs,
                          [(generated("default", 2), False)])
    time.sleep(1.1)  # the night window starts on a new second of the logs' timestamps
    night_start = int(time.time())
    traffic.serve_and_log(served["base_path"], served["model"], logs,
                          [(generated("night_heavy", 1), False)])
    newest = int(time.time())
    code, report, output = monitor(served, logs, "--window", f"{newest - night_start + 1}s",
                                   "--until", str(newest))
    assert code == EXIT_ALARM
    assert report["window"]["images"] == TRAFFIC_IMAGES
    assert report["window"]["previous_images"] >= 100
    alarms = report["alarms"]
    for check in ("skew", "drift vs previous window"):
        assert any(a.startswith(f"{check}: meta/lighting") for a in alarms), alarms
        assert any(a.startswith(f"{check}: stats/brightness") for a in alarms), alarms
    assert "ALARM" in output


def test_new_camera_sent_as_client_id_trips_the_camera_slice(served, generated, tmp_path):
    logs = log(served, tmp_path, (generated("new_camera", 1), True))
    code, report, _ = monitor(served, logs)
    assert code == EXIT_ALARM
    new = [s for s in report["slices"] if s["new_in_serving"]]
    assert [s["slice"] for s in new] == ["meta/camera=cam-d"]
    assert any(a.startswith("skew: meta/camera L_inf") for a in report["alarms"])
    assert "cam-d" in report["schema_anomalies"]["meta/camera"]
    # The image requests carried no lighting: nothing is claimed about it.
    assert not any("meta/lighting" in a for a in report["alarms"])
    # A version the logs do not hold is an input error naming what they do hold.
    wrong = CliRunner().invoke(main, ["monitor", "--logs", logs, "--home", served["home"],
                                      "--model", "999"])
    assert wrong.exit_code == EXIT_INPUT, wrong.output
    assert f"{served['model']}/{served['version']}" in wrong.output


def save_shifted(src: str, dest: str) -> None:
    """The served model with every score pushed towards 1 (over-confident, same ranking)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(src)

    def shift(outputs: dict) -> dict:
        outputs = dict(outputs)
        scores = outputs[fs.DETECTION_SCORES]
        outputs[fs.DETECTION_SCORES] = tf.where(scores > 0, scores + (1 - scores) * SCORE_SHIFT,
                                                scores)
        return outputs

    module = tf.Module()
    module.inner = loaded
    module.images = tf.function(
        lambda images: shift(loaded.signatures["serving_default"](images=images)),
        input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    module.examples = tf.function(
        lambda examples: shift(loaded.signatures["serving_examples"](examples=examples)),
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    tf.saved_model.save(module, dest, signatures={"serving_default": module.images,
                                                  "serving_examples": module.examples})


def test_shifted_scores_show_calibration_drift_once_labels_arrive(served, generated,
                                                                  tmp_path):
    base_path = str(tmp_path / "shifted")
    save_shifted(os.path.join(served["base_path"], served["version"]),
                 os.path.join(base_path, served["version"]))
    labels = generated("default", 1)
    logs = log(served, tmp_path, (labels, False), base_path=base_path)
    code, report, _ = monitor(served, logs, "--labels", labels)
    assert code == EXIT_ALARM
    overall = report["labels"]["slices"][0]
    assert overall["slice"] == "overall" and overall["images"] == TRAFFIC_IMAGES
    assert any(a.startswith("labels overall: D-ECE") for a in report["alarms"]), report["alarms"]
    assert overall["D-ECE"] > overall["eval_D-ECE"]
