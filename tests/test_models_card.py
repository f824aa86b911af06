"""The model card of the default DAG's run (tiny data, the real trainer and edge branch).

``sightline models show V`` writes it; the test parses model_card.json and looks for
every section, and checks that its ``model_card`` member is a Model Card that
model-card-toolkit would load (schema v0.0.2, nothing outside the schema's fields).
"""

from __future__ import annotations

import copy
import json

import jsonschema
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.registry import card


def strict_schema() -> dict:
    """MCT's schema with every object closed (its ``from_json`` rejects unknown fields).

    The schema's ``#definitions/graphic`` reference lacks a slash; jsonschema < 4 (which
    model-card-toolkit pins) resolved it anyway, today's jsonschema does not.
    """
    with open(card.SCHEMA_PATH) as f:
        schema = json.loads(f.read().replace('"#definitions/', '"#/definitions/'))

    def close(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    strict = copy.deepcopy(schema)
    close(strict)
    return strict


def test_model_card_of_the_default_run_has_every_section(tiny_run):
    home, summary = tiny_run
    version = summary["pushed"]["version"]
    result = CliRunner().invoke(main, ["models", "show", version, "--json", "--home", home,
                                       "--config", "tiny"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    with open(shown["model_card"]["json"]) as f:
        document = json.load(f)
    with open(shown["model_card"]["html"]) as f:
        page = f.read()

    jsonschema.validate(document["model_card"], strict_schema())
    mct = document["model_card"]
    assert mct["schema_version"] == "0.0.2"
    assert mct["model_details"]["version"]["name"] == version
    assert {m["slice"] for m in mct["quantitative_analysis"]["performance_metrics"]} >= {
        "overall", "class: circle", "edge variant: qat_int8"}
    assert len(mct["quantitative_analysis"]["graphics"]["collection"]) == 3
    assert mct["considerations"]["use_cases"] and mct["considerations"]["limitations"]

    s = document["sightline"]
    assert set(card.SECTIONS) <= set(s)
    assert s["model"]["version"] == version and s["model"]["stage"] == "candidate"
    assert s["intended_use"]["for"] and s["intended_use"]["not_for"]
    splits = s["data"]["splits"]
    assert set(splits) == {"train", "eval"}
    assert summary["examples"]["splits"] == splits
    assert all(len(v["content_hash"]) == 64 and v["num_examples"] > 0 for v in splits.values())
    data = s["data"]
    assert data["span"] is not None and data["quarantined"] is not None
    assert data["listed_images"] >= sum(v["num_examples"] for v in splits.values())
    assert data["quarantined_images"] is not None and "quarantine_reasons" in data
    overall = {r["metric"]: r["value"] for r in s["metrics"]["overall"]}
    assert overall["mAP"] == round(summary["evaluation"]["overall"]["mAP"], 4)
    assert {r["slice"].split("=")[0] for r in s["metrics"]["slices"]} >= {"meta/camera",
                                                                         "meta/lighting"}
    [floor] = [g for g in s["gates"] if g["slice"] == "overall"]  # first model: floor only
    assert floor["margin"] == round(floor["value"] - floor["threshold"], 4) and floor["passed"]
    assert s["calibration"]["D-ECE"] is not None and s["calibration"]["reliability"]["count"]
    assert set(s["score_thresholds"]) <= set(s["model"]["class_names"])
    assert s["edge"]["enabled"]
    assert set(s["edge"]["variants"]) == set(summary["edge_variants"])
    assert all("mAP_change" in v for v in s["edge"]["variants"].values())
    assert s["hyperparameters"]["epochs"] == 1
    assert s["code_version"].startswith("git ")
    assert s["lineage"]["pushed_model"]["version"] == version and s["lineage"]["edges"]
    assert s["release"] == {"stage": "candidate", "history": [], "approvals": [],
                            "comparisons": []}
    facts = shown["model_card"]["summary"]  # `models show` tells the card's key facts
    assert facts["data"]["splits"] == {k: v["num_examples"] for k, v in splits.items()}
    assert facts["gates"] and facts["code_version"] == s["code_version"]
    printed = CliRunner().invoke(main, ["models", "show", version, "--home", home,
                                        "--config", "tiny"]).output
    assert "model card" in printed and "not for:" in printed and "gate mAP" in printed
    for heading in ("Intended use", "Training and evaluation data", "Gates and margins",
                    "Calibration", "Per-class score thresholds", "Edge variants",
                    "Hyperparameters", "Code version", "Lineage", "Release history"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("<img alt=") == 3  # plots beside their sections


HOSTILE = "<script>alert('x')</script>"


def hostile_card() -> dict:
    """A card's facts by hand, with markup wherever a person or a data file wrote text."""
    release = {"stage": "stable", "history": [
        {"id": 5, "kind": "transition", "time": 2.0e9, "version": "7", "actor": HOSTILE,
         "reason": HOSTILE, "from_stage": "canary", "to_stage": "stable", "action": "promote",
         "evidence": {"blessing": {"artifact_id": 3}, "approval": {"id": 4}}}],
        "approvals": [{"id": 4, "kind": "approval", "time": 1.9e9, "version": "7",
                       "actor": "alice", "reason": HOSTILE, "evidence": {}}],
        "comparisons": [{"id": 6, "kind": "comparison", "time": 1.95e9, "version": "7",
                         "actor": "bob", "reason": "", "baseline": "6", "mode": "shadow",
                         "passed": False, "problems": [HOSTILE]}]}
    return {
        "model": {"name": "m", "version": "7", "stage": "stable", "pushed_at": 1.8e9,
                  "path": f"/serving/{HOSTILE}/7", "run_id": HOSTILE, "blessed": True,
                  "class_names": [HOSTILE, "circle"]},
        "intended_use": {"for": [HOSTILE], "not_for": [HOSTILE], "users": [HOSTILE]},
        "data": {"artifact_id": 2, "uri": "/examples", "span": 0, "quarantined": 1,
                 "quarantine_reasons": {HOSTILE: 1}, "listed_images": 10,
                 "quarantined_images": 1,
                 "splits": {"train": {"num_examples": 9, "content_hash": "ab" * 32}}},
        "metrics": {"overall": [{"metric": "mAP", "value": 0.5, "baseline": None,
                                 "change": None}],
                    "slices": [{"slice": f"meta/camera={HOSTILE}", "images": 3, "mAP": 0.4}],
                    "classes": [{"class": HOSTILE, "objects": 4, "AP": 0.3}]},
        "gates": [{"gate": "mAP >= 0.1", "slice": "overall", "metric": "mAP", "value": 0.5,
                   "threshold": 0.1, "margin": 0.4, "passed": True}],
        "calibration": {"D-ECE": 0.05, "per_class": {HOSTILE: 0.1},
                        "reliability": {"count": [2, 0], "score": [0.3, 0.0],
                                        "precision": [0.5, 0.0]}},
        "score_thresholds": {HOSTILE: 0.3},
        "edge": {"enabled": True, "variants": {"qat_int8": {"mAP": 0.49, "mAP_change": -0.01,
                                                            "size_bytes": 2048}},
                 "shipped": {"variant": HOSTILE}},
        "hyperparameters": {"epochs": 1, "note": HOSTILE},
        "code_version": HOSTILE,
        "lineage": {"examples": [{"uri": "/examples"}],
                    "edges": [{"to_type": "Model", "to_artifact": 3, "execution": HOSTILE,
                               "input": "examples", "from_type": "Examples",
                               "from_artifact": 2}]},
        "release": release,
    }


def test_the_card_escapes_every_text_people_and_data_wrote():
    s = hostile_card()
    mct = card.to_model_card_toolkit(s, {})
    jsonschema.validate(mct, strict_schema())
    page = card.render_html({"sightline": s, "model_card": mct})
    assert "<script" not in page
    assert page.count("&lt;script&gt;") >= 15  # each field above, escaped where shown
    assert "approval: 4; blessing: 3" in page  # the evidence a transition was checked on
    for heading in ("Quarantine reasons", "Reliability", "Approvals", "Comparisons"):
        assert f"<h3>{heading}</h3>" in page
