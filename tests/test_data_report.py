"""``sightline data report``: a span's data as DriftCheck saw it, after two real tiny runs
(the default world, then a night-heavy span that AnomalyGate stops)."""

from __future__ import annotations

import base64
import html
import json
import os
import re

import pytest
from click.testing import CliRunner
from tensorflow_metadata.proto.v0 import statistics_pb2

from pipelines.cli import main
from tests.oracle_trainer import run_tiny


@pytest.fixture(scope="module")
def data_runs(tmp_path_factory) -> dict:
    home = str(tmp_path_factory.mktemp("data_report"))
    return {"first": run_tiny(home), "night": run_tiny(home, "data.synthetic.scenario=night_heavy"),
            "home": home}


def _report(home: str, *args: str) -> tuple[dict, str, str]:
    out = os.path.join(home, "out-" + "-".join(args).replace(" ", "_"))
    result = CliRunner().invoke(main, ["data", "report", *args, "--home", home, "--out", out])
    assert result.exit_code == 0, result.output
    with open(os.path.join(out, "report.json")) as f:
        data = json.load(f)
    with open(os.path.join(out, "report.html")) as f:
        return data, f.read(), result.output


def test_latest_span_report_shows_the_drift_the_gate_stopped(data_runs):
    home, first, night = data_runs["home"], data_runs["first"], data_runs["night"]
    assert night["failure"]["component"] == "AnomalyGate"
    data, page, output = _report(home, "latest")
    assert "drift: meta/lighting" in output
    # Header: the night run, compared with the first run's statistics.
    assert data["run_id"] == night["run_id"] and data["span"] == 0
    assert data["pipeline"] == "sightline-tiny" and data["split"] == "train"
    assert data["baseline"]["span"] == 0
    assert data["baseline"]["examples_uri"] == first["examples"]["uri"]
    assert data["stopped_at_anomaly_gate"] and "The data drifted" in data["failure"]["error"]
    assert data["verdict"]["drift_detected"]
    # Drift numbers: drift.json's, as in the run summary.
    drifted = set(night["drift"]["drifted_features"])
    assert {"meta/lighting", "stats/brightness"} <= drifted
    assert set(data["verdict"]["drifted_features"]) == drifted
    rows = {row["feature"]: row for row in data["features"]}
    for feature, measurements in night["drift"]["features"].items():
        for name, value in measurements.items():
            assert rows[feature][name] == pytest.approx(value, abs=1e-4), (feature, name)
    assert "L_inf" in rows["meta/lighting"]["drifted"]
    assert rows["meta/lighting"]["L_inf_threshold"] == pytest.approx(0.15)
    assert "JS" in rows["stats/brightness"]["drifted"]
    # Histograms: every box counted once; the baseline span has the same boxes (same seed).
    boxes = sum(c["boxes"] for c in data["drift"]["class_boxes"].values())
    classes = data["histograms"]["classes"]
    assert sum(classes["current"]) == boxes == sum(r["boxes"] for r in data["classes"])
    assert classes["baseline"] == classes["current"]
    brightness = data["histograms"]["numeric"]["stats/brightness"]
    assert sum(brightness["current"]) == data["num_examples"] == sum(brightness["baseline"])
    assert len(brightness["edges"]) == len(brightness["current"]) + 1
    lighting = data["histograms"]["categorical"]["meta/lighting"]
    night_share = lighting["current"][lighting["values"].index("night")] / data["num_examples"]
    assert night_share > 0.5
    assert len(data["samples"]) == 6 and "base64" not in json.dumps(data)  # no pixels
    # The page: header, drift table rows, plots, 6 samples, Facets.
    assert "stopped at AnomalyGate" in page and "no baseline" not in page
    for feature in rows:
        assert f"<td>{feature}</td>" in page
    assert re.search(r"<td class=bad>0\.51\d\d</td><td>0\.1500</td>", page)  # meta/lighting L∞
    assert page.count("data:image/jpeg;base64,") == 6
    assert page.count("data:image/png;base64,") == 3
    assert "Facets Overview" in page and "srcdoc=" in page and "facets-overview" in page
    assert "loaded from" in page  # says Facets needs the web
    # The Facets iframe holds both spans' statistics.
    facets = html.unescape(re.search(r'srcdoc="([^"]*)"', page).group(1))
    proto = re.search(r'proto-input="([^"]+)"', facets).group(1)
    stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(base64.b64decode(proto))
    assert [d.name for d in stats.datasets] == ["span 0 (current)", "span 0 (baseline)"]
    assert [d.num_examples for d in stats.datasets] == [data["num_examples"]] * 2


def test_first_span_has_no_baseline(data_runs):
    home, first = data_runs["home"], data_runs["first"]
    result = CliRunner().invoke(main, ["data", "report", "0", "--run", first["run_id"],
                                       "--home", home])
    assert result.exit_code == 0, result.output
    out = os.path.join(home, "reports", "data-span-0-" + re.sub(r"[^\w.-]+", "-",
                                                                first["run_id"]))
    with open(os.path.join(out, "report.json")) as f:
        data = json.load(f)
    with open(os.path.join(out, "report.html")) as f:
        page = f.read()
    assert data["run_id"] == first["run_id"] and data["baseline"] is None
    assert data["features"] == [] and not data["stopped_at_anomaly_gate"]
    assert data["histograms"]["classes"]["baseline"] is None
    assert "no baseline: first span" in page and "did not stop at AnomalyGate" in page
    assert page.count("data:image/jpeg;base64,") == 6


@pytest.mark.parametrize("args, message", [
    (["7"], "checked span 7; spans checked: 0"),
    (["latest", "--run", "no-such-run"], "no run 'no-such-run'"),
    (["yesterday"], "SPAN must be a non-negative integer or 'latest'"),
])
def test_errors_are_clear(data_runs, args, message):
    result = CliRunner().invoke(main, ["data", "report", *args, "--home", data_runs["home"]])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_no_store_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["data", "report", "--home", str(tmp_path)])
    assert result.exit_code == 1 and "no ML Metadata store" in result.output, result.output
