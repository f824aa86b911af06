"""Drift through the real DAG: a night-heavy span after a default one stops before training
(or, with drift.on_drift=warn, trains), and the findings are in MLMD and the run summary."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipelines import configs
from pipelines.cli import main
from pipelines.reports import runs
from tests.oracle_trainer import run_tiny


@pytest.fixture(scope="module")
def drift_runs(tmp_path_factory) -> dict:
    home = str(tmp_path_factory.mktemp("drift"))
    return {
        "first": run_tiny(home),
        "night": run_tiny(home, "data.synthetic.scenario=night_heavy"),
        # Back to the default world: drift again, versus the night span before it.
        "back_warn": run_tiny(home, "drift.on_drift=warn"),
        "home": home,
    }


def test_first_span_has_nothing_to_compare(drift_runs):
    first = drift_runs["first"]
    assert first["status"] == "succeeded"
    assert first["drift"]["baseline_span"] is None and first["drift"]["drifted_features"] == []


def test_drifted_span_stops_before_training_naming_what_moved(drift_runs):
    night = drift_runs["night"]
    ran = {c["component"]: c["status"] for c in night["components"]}
    assert ran["AnomalyGate"] == "failed" and "Trainer" not in ran
    assert {"meta/lighting", "stats/brightness"} <= set(night["drift"]["drifted_features"])
    error = night["failure"]["error"]
    assert "The data drifted" in error and "meta/lighting: L_inf" in error
    assert "stats/brightness: JS" in error and "drift.on_drift=warn" in error


def test_drift_is_queryable_in_mlmd_and_shown_by_runs_show(drift_runs):
    home, night = drift_runs["home"], drift_runs["night"]
    store = runs.connect(configs.Paths(home, "sightline-tiny").metadata)
    [artifact] = store.get_artifacts_by_id([night["drift"]["artifact_id"]])
    props = artifact.custom_properties
    assert props["drift_detected"].int_value == 1
    assert props["L_inf:meta/lighting"].double_value > 0.15
    assert props["PSI:stats/brightness"].double_value > 0.25
    result = CliRunner().invoke(main, ["runs", "show", night["run_id"], "--home", home])
    assert result.exit_code == 0, result.output
    assert "drift vs the previous data" in result.output and "meta/lighting" in result.output


def test_on_drift_warn_trains_and_keeps_the_record(drift_runs):
    warned = drift_runs["back_warn"]
    assert warned["status"] == "succeeded" and warned["blessed"] is not None
    # The baseline is the latest data before this run: the night span, stopped or not.
    assert {"meta/lighting", "stats/brightness"} <= set(warned["drift"]["drifted_features"])
