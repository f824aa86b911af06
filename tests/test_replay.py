"""sightline replay: logged requests re-run through a version, compared with what was served."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.cli.feedback import GATE_FAILED
from tests import serving_fixture
from tests.fake_detector import save_fake_detector
from tests.feedback_fixture import batches, synth_examples, write_log


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """Two fake detectors (GT-derived, seconds to save): the served one and a degraded one
    whose boxes move 20x as much (scores, hashed from the GT box, stay: the matching must
    catch it)."""
    root = tmp_path_factory.mktemp("fakes")
    paths = {}
    for name, jitter in (("good", 0.05), ("degraded", 1.0)):
        paths[name] = str(root / name)
        save_fake_detector(paths[name], jitter)
    examples = synth_examples(root, "default", 12, seed=3)
    logs = root / "logs"
    write_log(paths["good"], batches("examples", examples, 3), str(logs / "det"),
              signature="serving_examples", client_id=b"<script>alert(1)</script>")
    return paths, str(logs)


def _replay(home, logs, model, *extra):
    result = CliRunner().invoke(main, ["replay", "--home", str(home), "--logs", logs,
                                       "--model", model, "--json", *extra])
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, report


def test_same_version_same_bytes_gives_identical_outputs(tmp_path):
    model = serving_fixture.exported_model(0)
    images = [serving_fixture.encode_image(i) for i in range(5)]
    images.append(serving_fixture.encode_image(9, fmt="PNG"))
    logs = tmp_path / "logs"
    write_log(model, batches("images", images, 2), str(logs / "det"))
    result, report = _replay(tmp_path / "home", str(logs), model)
    assert result.exit_code == 0, result.output
    assert report["requests"]["replayed"] == 3 and report["images"]["replayed"] == 6
    assert report["identical_share"] == 1.0 and report["agreement"] == 1.0
    assert report["score_delta"]["max_abs"] in (None, 0.0)
    assert report["latency_ms"]["replayed"]["count"] == 3
    assert report["latency_ms"]["served"]["count"] == 3


@pytest.mark.slow  # two real detector loads (~25 s on 2 shared cores)
def test_another_seed_is_not_identical(tmp_path):
    """The bit-exact check is not vacuous: an untrained detector of another seed differs."""
    images = [serving_fixture.encode_image(i) for i in range(4)]
    logs = tmp_path / "logs"
    write_log(serving_fixture.exported_model(0), batches("images", images), str(logs / "det"))
    _, report = _replay(tmp_path / "home", str(logs), serving_fixture.exported_model(1),
                        "--min-agreement", "0")
    assert report["identical_share"] == 0.0


def test_degraded_version_reports_the_drop_and_fails_the_gate(fakes, tmp_path):
    paths, logs = fakes
    same, same_report = _replay(tmp_path, logs, paths["good"])
    assert same.exit_code == 0, same.output
    assert same_report["identical_share"] == 1.0 and same_report["agreement"] == 1.0
    assert same_report["score_delta"]["matched"] > 20

    worse, report = _replay(tmp_path, logs, paths["degraded"], "--out", str(tmp_path / "r"))
    assert worse.exit_code == GATE_FAILED
    assert report["identical_share"] == 0.0
    assert report["agreement"] < 0.5
    assert report["problems"] and "below 90.00%" in report["problems"][0]
    unmatched = sum(row["unmatched_served"] for row in report["classes"].values())
    assert unmatched > 0 and report["worst_images"]
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert json.loads((tmp_path / "r" / "report.json").read_text())["agreement"] == \
        report["agreement"]


def test_redacted_requests_are_counted_not_dropped(fakes, tmp_path):
    paths, _ = fakes
    examples = synth_examples(tmp_path, "default", 4, seed=3)
    logs = tmp_path / "logs"
    write_log(paths["good"], batches("examples", examples[:2]), str(logs / "a"),
              signature="serving_examples", include_images=False)
    write_log(paths["good"], batches("examples", examples[2:], 1), str(logs / "b"),
              signature="serving_examples")
    result, report = _replay(tmp_path, str(logs), paths["good"])
    assert result.exit_code == 0, result.output
    assert report["requests"]["read"] == 3
    assert report["requests"]["not_replayable_redacted"] == 1
    assert report["images"]["redacted"] == 2 and report["images"]["replayed"] == 2

    only_redacted = tmp_path / "redacted"
    write_log(paths["good"], batches("examples", examples[:2]), str(only_redacted / "a"),
              signature="serving_examples", include_images=False)
    result, report = _replay(tmp_path, str(only_redacted), paths["good"])
    assert result.exit_code == GATE_FAILED
    assert "--request_log_include_images" in report["problems"][0]


def test_a_version_without_the_logged_signature_fails_those_requests(fakes, tmp_path):
    images = [serving_fixture.encode_image(i) for i in range(3)]
    logs = tmp_path / "logs"
    write_log(serving_fixture.exported_model(0), batches("images", images, 1), str(logs / "d"))
    result, report = _replay(tmp_path, str(logs), fakes[0]["good"])
    assert result.exit_code == GATE_FAILED
    assert report["requests"]["failed"] == {
        'Serving signature key "serving_default" not found.': 3}


def test_bad_model_and_missing_logs_are_one_line_errors(tmp_path):
    result = CliRunner().invoke(main, ["replay", "--home", str(tmp_path), "--logs",
                                       str(tmp_path / "none"), "--model", str(tmp_path)])
    assert result.exit_code == 2 and "no saved_model.pb" in result.output
    model = serving_fixture.exported_model(0)
    result = CliRunner().invoke(main, ["replay", "--home", str(tmp_path), "--logs",
                                       str(tmp_path / "none"), "--model", model])
    assert result.exit_code == 1 and "no request log files" in result.output
