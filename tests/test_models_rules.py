"""The registry's rules, stage derivation and models.config writer, without a store."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pipelines.registry import rules, serving_config
from pipelines.registry.registry import Registry, Snapshot, derive_stages
from pipelines.registry.store import Record
from pipelines.settings import ReleaseSettings
from serving.model_config import parse_model_server_config

SETTINGS = ReleaseSettings(min_compare_requests=20)
GOOD_REPORT = {"mode": "shadow", "requests": {"paired": 40, "candidate": 40},
               "images_paired": 40, "agreement": 0.97, "classes": {}, "latency_ratio": 1.1}


def approval(record_id: int, at: float) -> Record:
    return Record(id=record_id, kind="approval", time=at, version="7", actor="alice",
                  reason="ok")


def facts(**changes) -> rules.VersionFacts:
    base = rules.VersionFacts(
        version="7", stage="canary", path="/serving/m/7", on_disk=True, blessed=True,
        blessing_id=18, blessing_time=1000.0, approval=approval(30, 2000.0),
        canary_record=Record(id=31, kind="transition", time=2100.0, version="7", actor="bob",
                             reason="", to_stage="canary"))
    return dataclasses.replace(base, **changes)


def comparison(record_id: int, report: dict) -> Record:
    return Record(id=record_id, kind="comparison", time=3000.0, version="7", actor="carol",
                  reason="", baseline="5", mode=report["mode"], report=report)


def test_a_canary_with_approval_and_passing_evidence_may_become_stable():
    assert rules.for_stable(facts(), "5", comparison(40, GOOD_REPORT), SETTINGS) == []
    # The first stable version has nothing to be compared with.
    assert rules.for_stable(facts(), None, None, SETTINGS) == []


def test_a_refusal_names_every_rule_broken():
    problems = rules.for_stable(
        facts(stage="candidate", blessed=False, approval=None, on_disk=False, canary_record=None),
        "5", None, SETTINGS)
    assert len(problems) == 4
    assert "is candidate, not canary: promote it to canary first" in problems[0]
    assert "is not blessed: the Evaluator's latest evaluation of its model (ModelBlessing " \
           "18, 1970-01-01 00:16:40 UTC) did not pass the gates" in problems[1]
    assert "has no approval: record one with `sightline models approve 7 --reason ...`" \
        in problems[2]
    assert "missing or incomplete on disk (/serving/m/7 has no saved_model.pb)" in problems[3]


def test_an_approval_older_than_the_blessing_does_not_count():
    [problem] = rules.for_stable(facts(approval=approval(30, 900.0)), None, None, SETTINGS)
    assert problem.startswith("the approval of version 7 (by alice, 1970-01-01 00:15:00 UTC) "
                              "is older than its blessing (1970-01-01 00:16:40 UTC)")


def test_canary_evidence_must_exist_postdate_the_canary_and_pass():
    [missing] = rules.for_stable(facts(), "5", None, SETTINGS)
    assert missing.startswith("no canary or shadow comparison of version 7 with stable "
                              "version 5 recorded since it became canary")
    assert "sightline models compare 5 7" in missing
    [stale] = rules.for_stable(facts(), "5", comparison(29, GOOD_REPORT), SETTINGS)
    assert stale.startswith("no canary or shadow comparison")
    small = {**GOOD_REPORT, "requests": {"paired": 12, "candidate": 12}, "agreement": 0.5}
    problems = rules.for_stable(facts(), "5", comparison(40, small), SETTINGS)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "it covers 12 shadow-paired requests; release.min_compare_requests is 20",
        "detections agree on 50.0% of 40 paired images; release.min_agreement is 90%"]
    assert problems[0].startswith("comparison 40 (")


def test_canary_needs_a_blessed_version_on_disk_not_already_serving():
    assert rules.for_canary(facts(stage="candidate")) == []
    assert rules.for_canary(facts(stage="retired")) == []
    assert rules.for_canary(facts(stage="stable")) == ["version 7 is already stable"]
    assert len(rules.for_canary(facts(stage="candidate", blessed=False, on_disk=False))) == 2


def transition(record_id: int, version: str, to: str, action: str = "promote",
               from_stage: str = "") -> Record:
    return Record(id=record_id, kind="transition", time=float(record_id), version=version,
                  actor="x", reason="", from_stage=from_stage, to_stage=to, action=action)


def test_stages_are_the_newest_transition_and_rollback_skips_rolled_back_versions():
    records = [transition(1, "1", "canary"), transition(2, "1", "stable"),
               transition(3, "2", "canary"), transition(4, "1", "retired", "replace"),
               transition(5, "2", "stable"), transition(6, "2", "retired", "rollback", "stable"),
               transition(7, "1", "stable", "rollback"), transition(8, "3", "canary")]
    versions = ["1", "2", "3", "4"]
    stages = derive_stages(versions, records)
    assert stages == {"1": "stable", "2": "retired", "3": "canary", "4": "candidate"}
    snap = Snapshot(dict.fromkeys(versions), records, stages)
    assert (snap.stable, snap.canary) == ("1", "3")
    # 2 was stable after 1 but was rolled back: no automatic way back to it.
    assert Registry._previous_stable(snap, "1") is None
    before = Snapshot(dict.fromkeys(versions), records[:5], derive_stages(versions, records[:5]))
    assert Registry._previous_stable(before, "2") == "1"


def test_models_config_keeps_other_models_and_logging_and_swaps_atomically(tmp_path):
    path = str(tmp_path / "serving" / "models.config")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write('model_config_list { config { name: "other" base_path: "/o" } '
                'config { name: "m" base_path: "/old" logging_config { log_collector_config '
                '{ filename_prefix: "/logs/m" } sampling_config { sampling_rate: 0.5 } } '
                'version_labels { key: "stable" value: 1 } '
                'model_version_policy { specific { versions: 1 } } } }')
    current = serving_config.read(path)
    updated = serving_config.with_model(current, "m", "/serving/m", 1, 3, "/unused", 0.1)
    staged = serving_config.StagedConfig(path, updated)
    assert serving_config.labels(serving_config.read(path), "m") == {"stable": 1}  # not yet
    staged.commit()
    models = {m.name: m for m in parse_model_server_config(open(path).read())}
    assert set(models) == {"other", "m"}
    m = models["m"]
    assert (m.base_path, m.policy, m.specific_versions) == ("/serving/m", "specific", (1, 3))
    assert m.label_map() == {"canary": 3, "stable": 1}
    assert (m.logging.filename_prefix, m.logging.sampling_rate) == ("/logs/m", 0.5)  # kept
    assert [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")] == []
    gone = serving_config.with_model(serving_config.read(path), "m", "/serving/m", None, None,
                                     "", 0.1)
    assert [e.name for e in gone.model_config_list.config] == ["other"]
    fresh = serving_config.with_model(gone, "new", "/serving/new", 4, None, "/logs/new", 0.1)
    new = serving_config.entry(fresh, "new")
    assert new.logging_config.log_collector_config.filename_prefix == "/logs/new"
    discarded = serving_config.StagedConfig(path, fresh)
    discarded.discard()
    assert not os.path.exists(discarded.temp_path)


def test_an_unparsable_models_config_is_named():
    with pytest.raises(ValueError, match="is not a ModelServerConfig text proto"):
        serving_config.read(__file__)
