"""Scheduled spans: each run compares its span with the previous one and says which span
that was (statistics artifacts all carry span 0; the span is the examples')."""

from __future__ import annotations

import pytest

from data import synth
from tests.oracle_trainer import run_tiny

pytestmark = pytest.mark.slow  # three DAG runs

PATTERN = "data.annotations_pattern=span-{SPAN}/annotations.json"


@pytest.fixture(scope="module")
def span_runs(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("spans")
    home = str(root / "home")
    runs = []
    for span, scenario in ((1, "default"), (2, "default"), (3, "night_heavy")):
        synth.generate(root / "data" / f"span-{span}", 48, seed=7 + span, scenario=scenario,
                       first_image_id=1 + 48 * (span - 1))
        # 48-image spans are noisy: only the night span is gated on drift.
        on_drift = "fail" if scenario == "night_heavy" else "warn"
        runs.append(run_tiny(home, f"data.root={root / 'data'}", PATTERN,
                             f"drift.on_drift={on_drift}"))
    return runs


def test_each_run_names_the_span_it_compared_with(span_runs):
    assert [r["examples"]["span"] for r in span_runs] == [1, 2, 3]
    assert [r["drift"]["baseline_span"] for r in span_runs] == [None, 1, 2]


def test_the_drift_gate_names_the_previous_span(span_runs):
    third = span_runs[2]
    assert third["status"] == "failed" and third["failure"]["component"] == "AnomalyGate"
    assert "drifted from the previous data (span 2, split train)" in third["failure"]["error"]


def test_a_wrong_images_root_stops_the_run_before_training(tmp_path):
    """The standard COCO layout without --images: every image is missing, the run stops at
    AnomalyGate naming the quarantine report, the top reason and the hint."""
    path = synth.generate(tmp_path / "coco", 48, seed=7)
    (tmp_path / "coco" / "annotations").mkdir()
    path.rename(tmp_path / "coco" / "annotations" / "instances_train.json")
    summary = run_tiny(str(tmp_path / "home"), f"data.root={tmp_path / 'coco'}",
                       "data.annotations_pattern=annotations/instances_train.json")
    assert summary["failure"]["component"] == "AnomalyGate"
    assert "Trainer" not in {c["component"] for c in summary["components"]}
    error = summary["failure"]["error"]
    assert "Too little usable data to train on:" in error
    assert "48 of 48 listed images (100%) were quarantined" in error
    assert "Top quarantine reasons: image_file_missing (48)" in error
    assert "quarantine.jsonl" in error and "images root is probably wrong" in error
